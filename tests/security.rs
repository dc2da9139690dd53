//! TLS and SASL end to end: each test starts tansu broker processes of its own (the binary
//! `scripts/kafka.sh` installs, `CX_TANSU`) and runs the service with the security settings in
//! `kafka.librdkafka_options`, as an operator would. The pinned tansu build accepts `--cert`/`--key`
//! but never serves TLS, and its only storage engine keeps no SCRAM credentials, so no login can
//! succeed (docs/broker.md): TLS is terminated by `scripts/tls_proxy.py` in front of the broker,
//! with a certificate made here by `openssl`; SASL is proven on its refusing side.

mod common;

use common::*;
use cx_sentinel::codec::Format;
use cx_sentinel::config::Config;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tansu binary, or `None` (skipped) when not configured and not required.
fn tansu() -> Option<String> {
    match std::env::var("CX_TANSU") {
        Ok(t) if !t.is_empty() => Some(t),
        _ if std::env::var_os("CX_REQUIRE_EXTERNAL").is_some() => {
            panic!("CX_TANSU is not set but CX_REQUIRE_EXTERNAL is: run scripts/test.sh")
        }
        _ => {
            eprintln!("skipped: set CX_TANSU to a tansu binary (scripts/kafka.sh path)");
            None
        }
    }
}

/// The Python that runs `scripts/tls_proxy.py` (standard library only), like `tests/wire.rs`'s.
fn python() -> Option<String> {
    match std::env::var("CX_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ if std::env::var_os("CX_REQUIRE_EXTERNAL").is_some() => {
            panic!("CX_PYTHON is not set but CX_REQUIRE_EXTERNAL is: run scripts/test.sh")
        }
        _ => {
            eprintln!("skipped: set CX_PYTHON (scripts/py-env.sh)");
            None
        }
    }
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 10 s) until something accepts connections on `port`.
fn wait_listening(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} not listening on {port} within 10 s");
}

/// A tansu broker on `port` (in memory) advertising `advertised`, with further arguments.
fn broker(tansu: &str, port: u16, advertised: u16, args: &[&str], log: &Path) -> Killed {
    let mut child = Command::new(tansu)
        .arg("broker")
        .args(["--listener-url", &format!("tcp://127.0.0.1:{port}")])
        .args([
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{advertised}"),
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .args(args)
        .stdout(Stdio::from(std::fs::File::create(log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(log.with_extension("err")).unwrap(),
        ))
        .spawn()
        .expect("starting tansu");
    wait_listening(port, "tansu", &mut child);
    Killed(child)
}

/// A self-signed certificate for 127.0.0.1 (its own CA) and its key, made with `openssl`.
fn certificate(dir: &Path, name: &str) -> (String, String) {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"])
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert.to_str().unwrap().into(), key.to_str().unwrap().into())
}

fn client(bootstrap: &str, security: &[(&str, &str)]) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap);
    for (k, v) in security {
        cc.set(*k, *v);
    }
    cc
}

fn secured(config: &mut Config, security: &[(&str, &str)]) {
    for (k, v) in security {
        config
            .kafka
            .librdkafka_options
            .insert(k.to_string(), v.to_string());
    }
}

/// Starts the service and returns its start-up error, waiting at most 60 s for it.
async fn start_error(config: Config) -> String {
    let svc = start(config).await;
    tokio::time::timeout(Duration::from_secs(60), svc.stop())
        .await
        .expect("the service gave up within 60 s")
        .expect_err("the service should not start")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_service_consumes_and_alerts_and_a_wrong_ca_fails_the_start() {
    let Some(tansu) = tansu() else { return };
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "broker");
    let (other, _) = certificate(dir.path(), "stranger");
    let (plain, tls) = (free_port(), free_port());
    // The broker advertises the TLS port: every connection a client makes goes through TLS.
    let _broker = broker(&tansu, plain, tls, &[], &dir.path().join("tansu.log"));
    let mut proxy = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tls_proxy.py"))
        .args([
            "--listen-port",
            &tls.to_string(),
            "--upstream-port",
            &plain.to_string(),
        ])
        .args(["--cert", &cert, "--key", &key])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("starting scripts/tls_proxy.py");
    wait_listening(tls, "tls_proxy.py", &mut proxy);
    let _proxy = Killed(proxy);

    let bootstrap = format!("127.0.0.1:{tls}");
    let security = [("security.protocol", "SSL"), ("ssl.ca.location", cert.as_str())];
    let t = Topics::unique();
    let admin: AdminClient<DefaultClientContext> = client(&bootstrap, &security).create().unwrap();
    let new: Vec<NewTopic<'_>> = [
        (&t.input, 1),
        (&t.state, 1),
        (&t.alerts, 1),
        (&t.dlq, 1),
        (&t.actions, 1),
    ]
    .into_iter()
    .map(|(name, parts)| NewTopic::new(name, parts, TopicReplication::Fixed(1)))
    .collect();
    for r in admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap()
    {
        r.expect("creating a topic over TLS");
    }

    let mut config = config(&bootstrap, &t, Format::Json, Format::Json);
    secured(&mut config, &security);
    let lines = payment_lines(0, 20, 2);
    let expected = replay(&config, &lines);
    assert_eq!(expected.len(), 10);
    let svc = start(config.clone()).await;
    let producer: FutureProducer = client(&bootstrap, &security).create().unwrap();
    for (key, payload) in keyed(&lines) {
        producer
            .send(
                FutureRecord::to(&t.input).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("producing over TLS");
    }
    let reader = reader(&bootstrap, &t.alerts, &security);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < expected.len() && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), reader.recv()).await {
            got.push(m.detach());
        }
    }
    svc.stop().await.unwrap();
    assert_eq!(alerts(Format::Json, &got), expected, "alerts over TLS");

    // A certificate the client does not trust: a clear start-up error, not a hang.
    secured(&mut config, &[("ssl.ca.location", other.as_str())]);
    let err = start_error(config).await;
    assert!(
        err.contains("refused the connection") && err.contains("SSL handshake failed"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_wrong_password_fails_the_start_with_a_clear_error() {
    let Some(tansu) = tansu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = broker(
        &tansu,
        port,
        port,
        &["--authentication"],
        &dir.path().join("tansu.log"),
    );
    let bootstrap = format!("127.0.0.1:{port}");
    let t = Topics::unique();
    let mut config = config(&bootstrap, &t, Format::Json, Format::Json);
    secured(
        &mut config,
        &[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "cx-sentinel"),
            ("sasl.password", "not-the-password"),
        ],
    );
    let started = Instant::now();
    let err = start_error(config).await;
    assert!(
        err.contains("refused the connection") && err.contains("SASL authentication error"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-password"),
        "the password leaked into the error: {err}"
    );
    eprintln!("refused after {:?}: {err}", started.elapsed());
}
