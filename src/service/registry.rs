//! Async Confluent Schema Registry client: HTTPS (rustls) or HTTP, basic or bearer auth, connect
//! and request timeouts, and errors sorted by what the caller should do about them.
//!
//! One call is one attempt: retrying (with [`Backoff`]) is the caller's, so that every wait can
//! also watch for shutdown.

pub use super::retry::Backoff;
use crate::config::{SchemaRegistryConfig, Secret};
use std::future::Future;
use std::time::{Duration, Instant};

/// Content type of the Confluent REST API (also what compatible registries expect).
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Registry answers quoted in errors are cut to this many bytes: they explain a rejection, and a
/// long one would only flood the log.
const QUOTE_MAX: usize = 200;

/// Why a registry call failed. Messages never contain credentials (nor customer data: requests
/// carry only schema ids, subjects and schemas).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Could not connect, timed out, or the registry answered 5xx, 408 or 429: try again later.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    /// 401/403: the credentials are wrong or lack permission. Retrying cannot help.
    #[error("schema registry refused the request with HTTP {status}: check {credentials}")]
    Auth {
        status: u16,
        /// The configuration keys the credentials came from.
        credentials: &'static str,
    },
    /// 404: the registry does not know this schema id (or subject).
    #[error("schema registry: {0} not found")]
    NotFound(String),
    /// An answer that is not what the API promises (an unexpected status or body).
    #[error("schema registry: unexpected answer: {0}")]
    Invalid(String),
    /// The client could not be built from `schema_registry.*` (e.g. an unreadable `ca_file`).
    #[error("schema registry client: {0}")]
    Setup(String),
}

impl RegistryError {
    /// Whether trying the same call again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable(_))
    }
}

enum Auth {
    None,
    Basic { username: String, password: Secret },
    Bearer(Secret),
}

impl Auth {
    /// What to check when the registry refuses us (named by configuration key).
    fn keys(&self) -> &'static str {
        match self {
            Auth::None => {
                "the registry wants credentials: set schema_registry.username and schema_registry.password, or schema_registry.bearer_token"
            }
            Auth::Basic { .. } => "the schema_registry.username and schema_registry.password credentials",
            Auth::Bearer(_) => "the schema_registry.bearer_token credentials",
        }
    }
}

/// A Schema Registry client. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    /// `url` without a trailing slash.
    base: String,
    auth: std::sync::Arc<Auth>,
    timeout: Duration,
    connect_timeout: Duration,
}

/// `Debug` shows where, never the credentials.
impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client for `config.url`, which must be set (see [`RegistryClient::from_config`]).
    pub fn new(config: &SchemaRegistryConfig) -> Result<Self, RegistryError> {
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| RegistryError::Setup("schema_registry.url is not set".into()))?;
        // reqwest is built without a bundled crypto provider (librdkafka brings OpenSSL; one more
        // TLS stack is enough). Installing ring as the process default is a no-op when something
        // installed one already, which is then used.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .user_agent(concat!("cx-sentinel/", env!("CARGO_PKG_VERSION")))
            // A proxy from the environment would silently reroute the credentials.
            .no_proxy();
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                RegistryError::Setup(format!("schema_registry.ca_file {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                RegistryError::Setup(format!(
                    "schema_registry.ca_file {}: not PEM certificates: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(RegistryError::Setup(format!(
                    "schema_registry.ca_file {}: holds no certificate",
                    path.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| RegistryError::Setup(chain(&e)))?;
        let auth = match (&config.username, &config.password, &config.bearer_token) {
            (Some(username), Some(password), None) => Auth::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            (None, None, Some(token)) => Auth::Bearer(token.clone()),
            _ => Auth::None,
        };
        if !matches!(auth, Auth::None) && url.starts_with("http://") {
            tracing::warn!("schema registry credentials are sent over plain http (schema_registry.url)");
        }
        Ok(Self {
            http,
            base: url.trim_end_matches('/').to_string(),
            auth: std::sync::Arc::new(auth),
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
        })
    }

    /// A client when `schema_registry.url` is set, else `None`.
    pub fn from_config(config: &SchemaRegistryConfig) -> Result<Option<Self>, RegistryError> {
        config.url.as_ref().map(|_| Self::new(config)).transpose()
    }

    /// The schema text registered under `id`; [`RegistryError::NotFound`] when it has none.
    pub async fn schema(&self, id: u32) -> Result<String, RegistryError> {
        let path = format!("/schemas/ids/{id}");
        let body = self
            .call(reqwest::Method::GET, &path, None)
            .await
            .map_err(|e| match e {
                RegistryError::NotFound(_) => RegistryError::NotFound(format!("schema id {id}")),
                e => e,
            })?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Invalid(format!("GET {path}: body is not JSON: {e}")))?;
        v["schema"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| RegistryError::Invalid(format!("GET {path}: no `schema` in the answer")))
    }

    /// Registers `schema` under `subject` (or finds it registered) and returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let path = format!("/subjects/{subject}/versions");
        let request = serde_json::json!({ "schema": schema }).to_string();
        let body = self
            .call(reqwest::Method::POST, &path, Some(request))
            .await
            .map_err(|e| match e {
                RegistryError::NotFound(_) => RegistryError::NotFound(format!("subject '{subject}'")),
                e => e,
            })?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Invalid(format!("POST {path}: body is not JSON: {e}")))?;
        v["id"]
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| RegistryError::Invalid(format!("POST {path}: no schema `id` in the answer")))
    }

    /// One request; the body of a 200, or the error its outcome classifies as.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("{method} {path}");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(body);
        }
        request = match &*self.auth {
            Auth::None => request,
            Auth::Basic { username, password } => request.basic_auth(username, Some(password.expose())),
            Auth::Bearer(token) => request.bearer_auth(token.expose()),
        };
        let unavailable = |e: reqwest::Error| {
            let e = e.without_url();
            RegistryError::Unavailable(if e.is_connect() && e.is_timeout() {
                format!(
                    "{what}: cannot connect within {:?} (schema_registry.connect_timeout)",
                    self.connect_timeout
                )
            } else if e.is_timeout() {
                format!(
                    "{what}: no answer within {:?} (schema_registry.timeout)",
                    self.timeout
                )
            } else {
                format!("{what}: {}", chain(&e))
            })
        };
        let response = request.send().await.map_err(unavailable)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(unavailable)?;
        match status {
            200..=299 => Ok(body.to_vec()),
            401 | 403 => Err(RegistryError::Auth {
                status,
                credentials: self.auth.keys(),
            }),
            404 => Err(RegistryError::NotFound(what)),
            408 | 429 | 500..=599 => Err(RegistryError::Unavailable(format!(
                "{what}: HTTP {status}: {}",
                quote(&body)
            ))),
            _ => Err(RegistryError::Invalid(format!(
                "{what}: HTTP {status}: {}",
                quote(&body)
            ))),
        }
    }
}

/// An error and its causes on one line, without the request URL (reqwest's `Display` repeats
/// it, and `what` already says which request).
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The start of a registry answer, printable.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(QUOTE_MAX)]);
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Runs `attempt` until it succeeds, fails for good, or `deadline` (from now) would pass before
/// the next try; retryable failures wait per [`Backoff`]. For start-up calls (registering the
/// alert schema), where no shutdown can be pending yet that the caller does not select on.
pub async fn retry_until<T, F, Fut>(deadline: Duration, mut attempt: F) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RegistryError>>,
{
    let started = Instant::now();
    let mut backoff = Backoff::default();
    loop {
        match attempt().await {
            Err(e) if e.is_retryable() => {
                let wait = backoff.next_wait();
                if started.elapsed() + wait > deadline {
                    return Err(RegistryError::Unavailable(format!(
                        "gave up after {:?}: {}",
                        started.elapsed(),
                        match e {
                            RegistryError::Unavailable(why) => why,
                            other => other.to_string(),
                        }
                    )));
                }
                tracing::warn!(error = %e, retry_in = ?wait, "schema registry call failed; retrying");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_server {
    //! A canned-answer HTTP(S) registry on a thread, for the registry, codec and tail tests.

    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    /// One request as the server saw it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Seen {
        /// `GET /schemas/ids/3`
        pub line: String,
        pub authorization: Option<String>,
    }

    /// Serves `answers` (status, body), one per connection, then stops. Every answer closes its
    /// connection, so each request is a connection; a connection that brings no request (a
    /// refused TLS handshake) uses up its answer. The handle yields what was asked; a server left
    /// waiting gives up after 10 s rather than hang a test.
    pub fn serve(answers: Vec<(u16, String)>) -> (String, std::thread::JoinHandle<Vec<Seen>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            answers
                .into_iter()
                .map_while(|(status, body)| {
                    let stream = accept(&listener)?;
                    Some(answer(stream, status, &body))
                })
                .flatten()
                .collect()
        });
        (url, handle)
    }

    /// Like [`serve`], over TLS with `cert_chain` and `key` (PKCS#8 DER); the URL names
    /// `localhost`.
    pub fn serve_tls(
        answers: Vec<(u16, String)>,
        cert: rustls::pki_types::CertificateDer<'static>,
        key: Vec<u8>,
    ) -> (String, std::thread::JoinHandle<Vec<Seen>>) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = std::sync::Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(vec![cert], rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()))
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
        let handle = std::thread::spawn(move || {
            answers
                .into_iter()
                .map_while(|(status, body)| {
                    let stream = accept(&listener)?;
                    let tls = rustls::ServerConnection::new(config.clone()).unwrap();
                    Some(answer(rustls::StreamOwned::new(tls, stream), status, &body))
                })
                .flatten()
                .collect()
        });
        (url, handle)
    }

    /// Accepts connections and never answers them (holds them open until 10 s without a new
    /// one pass).
    pub fn silent() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while let Some(s) = accept(&listener) {
                held.push(s);
            }
        });
        url
    }

    fn accept(listener: &TcpListener) -> Option<std::net::TcpStream> {
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    return Some(s);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        None
    }

    fn answer(mut stream: impl Read + Write, status: u16, body: &str) -> Option<Seen> {
        let mut reader = BufReader::new(&mut stream);
        let mut first = String::new();
        reader.read_line(&mut first).ok()?;
        let line = first.trim().trim_end_matches("HTTP/1.1").trim().to_string();
        let mut length = 0;
        let mut authorization = None;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "authorization" => authorization = Some(value.trim().to_string()),
                _ => {}
            }
        }
        let mut request_body = vec![0; length];
        reader.read_exact(&mut request_body).unwrap();
        write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        stream.flush().unwrap();
        Some(Seen { line, authorization })
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{Seen, serve, serve_tls, silent};
    use super::*;

    fn config(url: &str) -> SchemaRegistryConfig {
        SchemaRegistryConfig {
            url: Some(url.into()),
            ..Default::default()
        }
    }

    fn seen(line: &str) -> Seen {
        Seen {
            line: line.into(),
            authorization: None,
        }
    }

    #[tokio::test]
    async fn looks_up_and_registers() {
        let (url, h) = serve(vec![
            (200, r#"{"schema": "\"string\""}"#.into()),
            (
                404,
                r#"{"error_code": 40403, "message": "Schema 4 not found"}"#.into(),
            ),
            (200, r#"{"id": 12}"#.into()),
        ]);
        let r = RegistryClient::new(&config(&(url + "/"))).unwrap();
        assert_eq!(r.schema(3).await.unwrap(), "\"string\"");
        assert!(matches!(r.schema(4).await, Err(RegistryError::NotFound(w)) if w == "schema id 4"));
        assert_eq!(r.register("alerts-value", "{}").await.unwrap(), 12);
        assert_eq!(
            h.join().unwrap(),
            [
                seen("GET /schemas/ids/3"),
                seen("GET /schemas/ids/4"),
                seen("POST /subjects/alerts-value/versions")
            ]
        );
    }

    #[tokio::test]
    async fn answers_are_classified() {
        let (url, h) = serve(vec![
            (503, "down".into()),
            (429, "slow down".into()),
            (422, r#"{"message": "invalid schema"}"#.into()),
            (200, "not json".into()),
            (200, r#"{"id": -1}"#.into()),
        ]);
        let r = RegistryClient::new(&config(&url)).unwrap();
        let e = r.schema(1).await.unwrap_err();
        assert!(
            e.is_retryable() && e.to_string().contains("HTTP 503: down"),
            "{e}"
        );
        assert!(r.schema(1).await.unwrap_err().is_retryable());
        let e = r.register("s", "{}").await.unwrap_err();
        assert!(
            matches!(&e, RegistryError::Invalid(m) if m.contains("HTTP 422")),
            "{e}"
        );
        assert!(matches!(r.schema(1).await, Err(RegistryError::Invalid(_))));
        assert!(matches!(
            r.register("s", "{}").await,
            Err(RegistryError::Invalid(_))
        ));
        assert_eq!(h.join().unwrap().len(), 5);
        // Nothing listens on port 1.
        let r = RegistryClient::new(&config("http://127.0.0.1:1")).unwrap();
        assert!(r.schema(1).await.unwrap_err().is_retryable());
    }

    #[tokio::test]
    async fn refused_credentials_are_fatal_name_the_keys_and_never_print_the_secret() {
        let (url, h) = serve(vec![
            (401, "{}".into()),
            (403, "{}".into()),
            (401, "{}".into()),
            (401, "{}".into()),
        ]);
        let mut c = config(&url);
        c.username = Some("svc-sentinel".into());
        c.password = Some(Secret::new("hunter2-registry"));
        let r = RegistryClient::new(&c).unwrap();
        for status in [401, 403] {
            let e = r.schema(7).await.unwrap_err();
            assert!(
                matches!(e, RegistryError::Auth { status: s, .. } if s == status),
                "{e}"
            );
            assert!(!e.is_retryable());
            let text = format!("{e} {e:?} {r:?}");
            assert!(text.contains("schema_registry.password"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        c.username = None;
        c.password = None;
        c.bearer_token = Some(Secret::new("tok-hunter3"));
        let e = RegistryClient::new(&c).unwrap().schema(7).await.unwrap_err();
        assert!(e.to_string().contains("schema_registry.bearer_token"), "{e}");
        assert!(!format!("{e} {e:?}").contains("hunter3"));
        c.bearer_token = None;
        let e = RegistryClient::new(&c).unwrap().schema(7).await.unwrap_err();
        assert!(e.to_string().contains("wants credentials"), "{e}");
        h.join().unwrap();
    }

    #[tokio::test]
    async fn basic_and_bearer_credentials_are_sent() {
        let (url, h) = serve(vec![(200, r#"{"id": 1}"#.into()), (200, r#"{"id": 1}"#.into())]);
        let mut c = config(&url);
        c.username = Some("svc".into());
        c.password = Some(Secret::new("pw"));
        RegistryClient::new(&c)
            .unwrap()
            .register("s", "{}")
            .await
            .unwrap();
        c.username = None;
        c.password = None;
        c.bearer_token = Some(Secret::new("tok"));
        RegistryClient::new(&c)
            .unwrap()
            .register("s", "{}")
            .await
            .unwrap();
        let auth: Vec<_> = h.join().unwrap().into_iter().map(|s| s.authorization).collect();
        // base64("svc:pw") = c3ZjOnB3
        assert_eq!(auth, [Some("Basic c3ZjOnB3".into()), Some("Bearer tok".into())]);
    }

    #[tokio::test]
    async fn a_registry_that_never_answers_costs_one_timeout() {
        let mut c = config(&silent());
        // The shipped 10 s would make a slow test; the bound is what is under test, not its size.
        c.timeout = Duration::from_millis(200);
        let r = RegistryClient::new(&c).unwrap();
        let started = Instant::now();
        let e = r.schema(1).await.unwrap_err();
        assert!(
            e.is_retryable() && e.to_string().contains("schema_registry.timeout"),
            "{e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn connect_timeout_bounds_a_host_that_does_not_answer() {
        // A listener whose accept queue is full: Linux drops further SYNs, so a connect hangs
        // (a remote address cannot be used: this network may answer for any of them).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        let full =
            (0..16).any(
                |_| match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                    Ok(s) => {
                        queued.push(s);
                        false
                    }
                    Err(_) => true,
                },
            );
        assert!(full, "the accept queue never filled");
        let mut c = config(&format!("http://{addr}"));
        // The shipped 5 s would make a slow test; the bound is what is under test.
        c.connect_timeout = Duration::from_millis(200);
        let r = RegistryClient::new(&c).unwrap();
        let started = Instant::now();
        let e = r.schema(1).await.unwrap_err();
        assert!(
            e.is_retryable() && e.to_string().contains("schema_registry.connect_timeout"),
            "{e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn https_with_a_private_ca() {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let (url, h) = serve_tls(
            vec![(200, "never sent".into()), (200, r#"{"id": 5}"#.into())],
            leaf.der().clone(),
            key.serialize_der(),
        );
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        // Without the CA the server is not trusted: no request gets through.
        let e = RegistryClient::new(&config(&url))
            .unwrap()
            .register("s", "{}")
            .await
            .unwrap_err();
        assert!(e.is_retryable(), "{e}");
        let mut c = config(&url);
        c.ca_file = Some(ca_file);
        assert_eq!(
            RegistryClient::new(&c)
                .unwrap()
                .register("s", "{}")
                .await
                .unwrap(),
            5
        );
        assert_eq!(h.join().unwrap(), [seen("POST /subjects/s/versions")]);

        c.ca_file = Some(dir.path().join("missing.pem"));
        let e = RegistryClient::new(&c).unwrap_err();
        assert!(e.to_string().contains("schema_registry.ca_file"), "{e}");
    }

    #[tokio::test]
    async fn retry_until_gives_up_at_the_deadline_and_not_on_fatal_errors() {
        let mut calls = 0;
        let started = Instant::now();
        let e = retry_until(Duration::from_millis(250), || {
            calls += 1;
            async { Err::<(), _>(RegistryError::Unavailable("down".into())) }
        })
        .await
        .unwrap_err();
        // 100 ms, then 200 ms would pass the deadline.
        assert_eq!(calls, 2);
        assert!(
            e.to_string().contains("gave up") && e.to_string().contains("down"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));

        let mut calls = 0;
        let e = retry_until(Duration::from_secs(30), || {
            calls += 1;
            async {
                Err::<(), _>(RegistryError::Auth {
                    status: 401,
                    credentials: "x",
                })
            }
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(matches!(e, RegistryError::Auth { .. }));
    }
}
