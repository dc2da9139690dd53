//! `deploy/` against the tools that will read it and against the service itself: the alerting
//! rules through `promtool check rules` and `promtool test rules`, the Grafana dashboard's queries
//! through promtool's PromQL parser, every metric the dashboard and the rules name on a live
//! `/metrics`, the Kubernetes manifest through the API's JSON schemas and against the service's
//! config and HTTP routes, and the systemd unit through `systemd-analyze verify`.

mod common;

use common::tools::tool;
use common::*;
use cx_sentinel::codec::Format;
use cx_sentinel::config::Config;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn promtool() -> Option<PathBuf> {
    tool("CX_PROMTOOL", "promtool", "scripts/promtool.sh")
}

/// Runs a command; returns (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn alert_rules_pass_promtool_check() {
    let Some(promtool) = promtool() else { return };
    let (ok, out) = run(Command::new(promtool)
        .args(["check", "rules"])
        .arg(repo("deploy/prometheus/alerts.yml")));
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alert_rules_unit_tests_pass() {
    let Some(promtool) = promtool() else { return };
    let (ok, out) = run(Command::new(promtool)
        .args(["test", "rules"])
        .arg(repo("deploy/prometheus/alerts.test.yml")));
    assert!(ok, "{out}");
}

/// The dashboard as JSON.
fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana/cx-sentinel.json")).unwrap())
        .expect("the dashboard is JSON")
}

/// Every PromQL expression in the dashboard: panel targets, and the series selectors of the
/// templating variables' `label_values(selector, label)`.
fn dashboard_queries(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in d["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(
                target["expr"]
                    .as_str()
                    .expect("every target has an expr")
                    .to_string(),
            );
        }
    }
    for var in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(selector, _)| selector.to_string())
                .unwrap_or_else(|| panic!("unexpected templating query {q}"));
            out.push(inner);
        }
    }
    out
}

/// Grafana's variables replaced by what they expand to, so promtool can parse the expression.
fn expand_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$job", ".*")
        .replace("$instance", ".*")
}

/// `promtool check rules` over one recording rule per expression: promtool's PromQL parser.
fn promtool_parses(promtool: &Path, exprs: &[String]) -> (bool, String) {
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": e}))
        .collect();
    let file = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
    // JSON is YAML: promtool reads it as a rules file.
    std::fs::write(
        file.path(),
        serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )
    .unwrap();
    run(Command::new(promtool).args(["check", "rules"]).arg(file.path()))
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let Some(promtool) = promtool() else { return };
    let exprs: Vec<String> = dashboard_queries(&dashboard())
        .iter()
        .map(|e| expand_grafana_variables(e))
        .collect();
    assert!(exprs.len() >= 20, "{exprs:?}");
    let (ok, out) = promtool_parses(&promtool, &exprs);
    assert!(ok, "{out}");
    // The same path refuses a broken expression, so the check above is a real one.
    let (ok, out) = promtool_parses(&promtool, &["sum(rate(cx_sentinel_alerts_total[5m])".into()]);
    assert!(!ok, "promtool accepted a broken expression: {out}");
}

#[test]
fn dashboard_panels_cover_what_operators_ask_for() {
    let d = dashboard();
    let panels: Vec<&Value> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .collect();
    let mut ids = BTreeSet::new();
    for p in &panels {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "duplicate panel id in {p}");
        let g = &p["gridPos"];
        assert!(g["x"].as_i64().unwrap() + g["w"].as_i64().unwrap() <= 24, "{p}");
        assert!(!p["targets"].as_array().unwrap().is_empty(), "{p}");
    }
    let all = dashboard_queries(&d).join("\n");
    for needed in [
        "cx_sentinel_records_consumed_total",
        "cx_sentinel_consumer_lag_records",
        "histogram_quantile(0.99, sum by (le) (rate(cx_sentinel_end_to_end_latency_seconds_bucket",
        "sum by (rule) (rate(cx_sentinel_alerts_total",
        "sum by (status) (rate(cx_sentinel_alerts_total",
        "cx_sentinel_dead_letters_total",
        "cx_sentinel_customers_in_state",
        "cx_sentinel_state_bytes",
        "cx_sentinel_state_restoring_partitions",
        "cx_sentinel_state_restore_duration_seconds_bucket",
        "cx_sentinel_cases_held",
        "cx_sentinel_cases_total",
        "cx_sentinel_time_to_acknowledge_seconds_bucket",
        "cx_sentinel_time_to_recover_seconds_bucket",
    ] {
        assert!(all.contains(needed), "no dashboard query has {needed}");
    }
}

/// Every `cx_sentinel_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("cx_sentinel_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Sample names on a `/metrics` page (`name_bucket`, `name_sum`, `name_count` for histograms).
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l[..l.find(['{', ' ']).unwrap_or(l.len())].to_string())
        .collect()
}

fn missing(named: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    named
        .iter()
        .filter(|n| !exported.contains(*n) && !exported.contains(&format!("{n}_bucket")))
        .cloned()
        .collect()
}

#[test]
fn metric_name_scan_finds_histogram_series_and_plain_names() {
    let names =
        metric_names("histogram_quantile(0.9, rate(cx_sentinel_x_seconds_bucket[5m])) / cx_sentinel_y");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["cx_sentinel_x_seconds_bucket", "cx_sentinel_y"]
    );
    let page = "# TYPE cx_sentinel_h histogram\ncx_sentinel_h_bucket{le=\"1\"} 0\ncx_sentinel_c{a=\"b\"} 1\n";
    let got = exported(page);
    let named: BTreeSet<String> = ["cx_sentinel_h", "cx_sentinel_c", "cx_sentinel_gone"]
        .map(String::from)
        .into();
    assert_eq!(missing(&named, &got), ["cx_sentinel_gone"]);
}

/// The service on the real broker with alerts, a dead letter and an acknowledged then resolved
/// case behind it, so every label set the dashboard and rules need has appeared; then every name they use must be on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_rules_use_is_exported() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 1).await;
    let svc = start(config(&brokers, &t, Format::Json, Format::Json)).await;
    let mut records = keyed(&payment_lines(0, 2, 1));
    records.push(("c-garbled".into(), b"{\"event_id\": \"torn".to_vec()));
    produce(&brokers, &t.input, &records).await;
    assert_eq!(
        consume(&brokers, &t.alerts, 2, Duration::from_secs(60))
            .await
            .len(),
        2
    );
    assert_eq!(
        consume(&brokers, &t.dlq, 1, Duration::from_secs(60)).await.len(),
        1
    );
    // An agent acknowledges and resolves the first case: the case analytics get their series.
    let first = &alerts(
        Format::Json,
        &consume(&brokers, &t.alerts, 1, Duration::from_secs(60)).await,
    )[0];
    let (case, customer) = (
        first["case_id"].as_str().unwrap(),
        first["customer_id"].as_str().unwrap(),
    );
    let at = first["event_time"].as_i64().unwrap();
    let actions = [
        action_line("a-1", case, customer, "ACKNOWLEDGE", at + 60_000, None),
        action_line("a-2", case, customer, "RESOLVE", at + 120_000, Some("refunded")),
    ];
    produce(
        &brokers,
        &t.actions,
        &actions.map(|a| (customer.to_string(), a.into_bytes())),
    )
    .await;
    // Other alerts may come between (the idle partition's clock escalates on the ack SLA).
    let resolved = |by_id: &ById| by_id.values().any(|v| v[0]["status"] == "RESOLVED");
    let by_id = collect_alerts(&brokers, &t.alerts, Duration::from_secs(60), resolved).await;
    assert!(resolved(&by_id), "{by_id:#?}");

    let dashboard_names = metric_names(&dashboard_queries(&dashboard()).join("\n"));
    let rule_names = metric_names(&std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap());
    // Consumer lag comes from librdkafka's statistics (every 5 s): poll until it is there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (dashboard_missing, rules_missing) = loop {
        let (status, page) = svc.get("/metrics").await;
        assert_eq!(status, 200);
        let got = exported(&page);
        let d = missing(&dashboard_names, &got);
        let r = missing(&rule_names, &got);
        if (d.is_empty() && r.is_empty()) || Instant::now() > deadline {
            break (d, r);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    svc.stop().await.unwrap();
    assert!(
        dashboard_missing.is_empty(),
        "the dashboard names metrics the service does not export: {dashboard_missing:?}"
    );
    assert!(
        rules_missing.is_empty(),
        "the alerting rules name metrics the service does not export: {rules_missing:?}"
    );
    assert!(dashboard_names.len() >= 15, "{dashboard_names:?}");
}

/// The manifest's documents as JSON (PyYAML in the manifest tools' virtualenv).
fn manifest_documents(python: &Path) -> Vec<Value> {
    let (ok, out) = run(Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(repo("deploy/k8s/cx-sentinel.yaml")));
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap()
}

fn manifest_python() -> Option<PathBuf> {
    tool(
        "CX_MANIFEST_PYTHON",
        "cx-manifest-python",
        "scripts/manifest-tools.sh",
    )
}

/// `kubernetes-validate --strict` (the Kubernetes API's JSON schemas, unknown fields refused).
fn kubernetes_validate(python: &Path, file: &Path) -> (bool, String) {
    let bin = python.parent().unwrap().join("kubernetes-validate");
    run(Command::new(bin).arg("--strict").arg(file))
}

#[test]
fn kubernetes_manifest_passes_the_api_schemas() {
    let Some(python) = manifest_python() else { return };
    let file = repo("deploy/k8s/cx-sentinel.yaml");
    let (ok, out) = kubernetes_validate(&python, &file);
    assert!(ok, "{out}");
    assert_eq!(out.matches(" passed for resource ").count(), 4, "{out}");
    // A misspelt field fails the same check.
    let text = std::fs::read_to_string(&file).unwrap();
    let broken = text.replacen("periodSeconds: 10", "periodSecond: 10", 1);
    assert_ne!(broken, text);
    let bad = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(bad.path(), broken).unwrap();
    let (ok, out) = kubernetes_validate(&python, bad.path());
    assert!(!ok, "a misspelt probe field passed: {out}");
    assert!(out.contains("periodSecond"), "{out}");
}

fn by_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifest"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_manifest_agrees_with_the_service() {
    let Some(python) = manifest_python() else { return };
    let docs = manifest_documents(&python);
    let config_map = by_kind(&docs, "ConfigMap");
    let secret = by_kind(&docs, "Secret");
    let deployment = by_kind(&docs, "Deployment");
    let service = by_kind(&docs, "Service");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // The init container joins the ConfigMap and the Secret: together they are a valid config.
    let toml = format!(
        "{}{}",
        config_map["data"]["config.toml"].as_str().unwrap(),
        secret["stringData"]["credentials.toml"].as_str().unwrap()
    );
    let config = Config::from_toml_with_env(&toml, Path::new("configmap+secret"), false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config
            .kafka
            .librdkafka_options
            .get("security.protocol")
            .map(String::as_str),
        Some("SASL_SSL")
    );
    let init = pod["initContainers"][0]["command"][2].as_str().unwrap();
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    assert!(
        init.ends_with(&format!("> {config_path}")),
        "{init} does not write {config_path}"
    );

    // Volumes name the ConfigMap and the Secret of this manifest.
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"] == config_map["metadata"]["name"])
    );
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == secret["metadata"]["name"])
    );

    // The port is the configured http.listen port, named by the probes, the scrape annotation and the Service.
    let port = config
        .http
        .listen
        .rsplit_once(':')
        .unwrap()
        .1
        .parse::<i64>()
        .unwrap();
    let http_port = &container["ports"][0];
    assert_eq!(http_port["containerPort"].as_i64(), Some(port));
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    assert_eq!(service["spec"]["ports"][0]["targetPort"], http_port["name"]);
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );

    // Shutdown fits in the grace period.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > config.service.shutdown_timeout.as_secs(), "{grace}");

    // The probes' paths are the service's: live answers 200, ready 503 while nothing is assigned.
    let shared = std::sync::Arc::new(cx_sentinel::service::Shared::new(
        cx_sentinel::metrics::Metrics::new(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cx_sentinel::service::http::serve(listener, shared, async {
        let _ = stopped.await;
    }));
    for (probe, expected) in [
        ("livenessProbe", 200),
        ("readinessProbe", 503),
        ("startupProbe", 200),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["port"], http_port["name"], "{probe}");
        let path = get["path"].as_str().unwrap();
        assert_eq!(http_get(addr, path).await.0, expected, "{probe} {path}");
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// `systemd-analyze verify` of the unit with its binary pointed at the one just built. It exits
/// 0 on settings it ignores (a misspelt value is only a warning), so any output fails too.
fn verify_unit(systemd_analyze: &Path, text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("cx-sentinel.service");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/cx-sentinel", env!("CARGO_BIN_EXE_cx-sentinel")),
    )
    .unwrap();
    let (ok, out) = run(Command::new(systemd_analyze).arg("verify").arg(&unit));
    (ok && out.trim().is_empty(), out)
}

#[test]
fn systemd_unit_verifies() {
    let Some(systemd_analyze) = tool(
        "CX_SYSTEMD_ANALYZE",
        "systemd-analyze",
        "scripts/manifest-tools.sh",
    ) else {
        return;
    };
    let text = std::fs::read_to_string(repo("deploy/systemd/cx-sentinel.service")).unwrap();
    let (ok, out) = verify_unit(&systemd_analyze, &text);
    assert!(ok, "{out}");
    let (ok, out) = verify_unit(
        &systemd_analyze,
        &text.replace("Restart=on-failure", "Restart=sometimes"),
    );
    assert!(!ok, "a bad Restart= value passed: {out}");

    // The stop timeout covers the service's shutdown; restarts wait out the group's session timeout.
    let config = Config::load(&repo("config/default.toml")).unwrap();
    let secs = |key: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing"));
        line[key.len() + 1..].trim_end_matches('s').parse().unwrap()
    };
    assert!(secs("TimeoutStopSec") > config.service.shutdown_timeout.as_secs());
    assert!(secs("RestartSec") > 10, "session.timeout.ms is 10 s");
    assert!(text.contains("ExecStart=/usr/local/bin/cx-sentinel run --config /etc/cx-sentinel/config.toml"));
}
