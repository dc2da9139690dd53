//! Report: the table printed at the end and the JSON written to `--out`.

use crate::latency::{Latency, quantile};
use crate::peer::PeerOutcome;
use crate::throughput::{Baseline, Load, Sentinel};
use crate::{Args, BaselineKind, PeerKind, git_commit, value_name};
use cx_sentinel::config::Config;
use serde_json::{Value, json};

pub(crate) struct Report<'a> {
    pub(crate) args: &'a Args,
    /// The configuration the service ran with (before the per-run topics).
    pub(crate) config: &'a Config,
    pub(crate) load: Load,
    pub(crate) baseline: Baseline,
    pub(crate) sentinel: Sentinel,
    /// `--peer`: what it measured, or why it failed.
    pub(crate) peer: Option<PeerOutcome>,
    pub(crate) latency: Option<Latency>,
}

fn percent(share: Option<f64>) -> String {
    share.map_or("-".into(), |s| format!("{:.0}%", s * 100.0))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

impl Report<'_> {
    fn guarantee(&self) -> String {
        serde_json::to_value(self.config.processing.guarantee)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn throughput_ratio(&self) -> f64 {
        self.sentinel.steady.events_per_s() / self.baseline.steady.events_per_s()
    }

    fn cpu_ratio(&self) -> f64 {
        self.sentinel.steady.cpu_us_per_event() / self.baseline.steady.cpu_us_per_event().max(1e-9)
    }

    pub(crate) fn table(&self) -> String {
        let (b, s) = (&self.baseline, &self.sentinel);
        let mut t = String::new();
        let mut line = |l: String| {
            t.push_str(&l);
            t.push('\n');
        };
        line(format!(
            "cx-sentinel end-to-end benchmark: {} events, {} customers, {} partitions, commit {}",
            self.args.events,
            self.args.customers,
            self.args.partitions,
            git_commit()
        ));
        line(format!(
            "cx-sentinel: {}, state changelog {}, shipped lateness, alerts as {}",
            self.guarantee(),
            if self.config.state.changelog { "on" } else { "off" },
            value_name(self.args.output_format)
        ));
        line(format!(
            "load: {:.0} records/s produced ({:.1} MB, {:.0} B/record)",
            self.load.events as f64 / self.load.secs,
            self.load.bytes as f64 / 1e6,
            self.load.bytes as f64 / self.load.events as f64
        ));
        line(String::new());
        line(format!(
            "{:<28} {:>12} {:>14} {:>10} {:>10} {:>14} {:>8}",
            "", "events/s", "CPU µs/event", "cores", "wall s", "broker µs/ev", "steal"
        ));
        let kind = match b.kind {
            BaselineKind::Stream => "baseline (StreamConsumer)",
            BaselineKind::Base => "baseline (BaseConsumer)",
        };
        for (name, w, total) in [(kind, &b.steady, &b.total), ("cx-sentinel", &s.steady, &s.total)] {
            line(format!(
                "{:<28} {:>12.0} {:>14.2} {:>10.2} {:>10.2} {:>14} {:>8}",
                name,
                w.events_per_s(),
                w.cpu_us_per_event(),
                w.cpu / w.wall.max(1e-9),
                total.wall,
                opt(w.broker_cpu_us_per_event(), 2),
                percent(w.steal_share()),
            ));
        }
        line(format!(
            "{:<28} {:>12.3} {:>14.2}",
            "ratio sentinel/baseline",
            self.throughput_ratio(),
            self.cpu_ratio()
        ));
        match &self.peer {
            None => {}
            Some(Ok(p)) => {
                line(format!(
                    "{:<28} {:>12.0} {:>14.2} {:>10.2} {:>10.2} {:>14}",
                    format!("peer: {}", p.kind.name()),
                    p.events_per_s,
                    p.cpu_us_per_event,
                    p.cores,
                    p.total_wall,
                    "-"
                ));
                line(format!(
                    "{:<28} {:>12.3} {:>14.2}",
                    "ratio peer/cx-sentinel",
                    p.events_per_s / s.steady.events_per_s().max(1e-9),
                    p.cpu_us_per_event / s.steady.cpu_us_per_event().max(1e-9)
                ));
            }
            Some(Err(e)) => line(format!("peer: FAILED, not measured: {}", e.replace('\n', "\n  "))),
        }
        let wait = self.args.fetch_wait_ms.unwrap_or(500);
        let sleep = if wait >= 250 { wait / 2 } else { wait };
        line(format!(
            "note: fetch.wait.max.ms = {wait} ms{}: tansu 0.6 sleeps about {sleep} ms before answering \
             any fetch and returns at most 5 MiB, which can cap both consumers (docs/benchmark.md)",
            if self.args.fetch_wait_ms.is_none() {
                " (default)"
            } else {
                ""
            }
        ));
        line(format!(
            "our /metrics polling: {:.1}% of cx-sentinel's CPU ({:.1} ms per scrape at the end)",
            s.scrape_share * 100.0,
            s.scrape_cpu_ms
        ));
        line(String::new());
        match &self.latency {
            Some(l) => {
                let est = |q| opt(l.acked_ms(q).map(|b| b.estimate), 1);
                let bucket = |q| {
                    l.acked_ms(q)
                        .map_or("-".into(), |b| format!("({:.0}, {:.0}]", b.lower, b.upper))
                };
                line(format!(
                    "latency at {:.0} events/s offered for {} s after {} s warm-up, produced -> alert \
                     acknowledged ({:.0} alerts, service histogram): p50 {} ms, p99 {} ms in {}, \
                     p999 {} ms in {} (steal {})",
                    l.rate,
                    l.seconds,
                    l.warmup,
                    l.acked.count(),
                    est(0.5),
                    est(0.99),
                    bucket(0.99),
                    est(0.999),
                    bucket(0.999),
                    percent(l.steal),
                ));
                if let Some(r) = &l.relay {
                    let p99 = l.acked_ms(0.99).map(|b| b.estimate);
                    line(format!(
                        "  baseline, a bare relay{} (the service's client settings, every record \
                         forwarded), produced -> acknowledged ({} records, exact): p50 {} ms, p99 {} ms, \
                         p999 {} ms (steal {}); p99 ratio cx-sentinel/relay {}",
                        if r.alongside {
                            " alongside on the same input"
                        } else {
                            ""
                        },
                        r.ack_ms.len(),
                        opt(quantile(&r.ack_ms, 0.5), 0),
                        opt(quantile(&r.ack_ms, 0.99), 0),
                        opt(quantile(&r.ack_ms, 0.999), 0),
                        percent(r.steal),
                        opt(p99.zip(quantile(&r.ack_ms, 0.99)).map(|(s, r)| s / r.max(1.0)), 2),
                    ));
                }
                line(format!(
                    "  produced -> read back by a consumer ({} alerts, exact): p50 {} ms, p99 {} ms, \
                     p999 {} ms",
                    l.ages_ms.len(),
                    opt(l.quantile(0.5), 0),
                    opt(l.quantile(0.99), 0),
                    opt(l.quantile(0.999), 0),
                ));
            }
            None => line("latency: skipped".into()),
        }
        if let Some(l) = &self.latency {
            let legs = |v: &[i64]| [0.5, 0.99, 0.999].map(|q| opt(quantile(v, q), 0)).join("/");
            line(format!(
                "  legs p50/p99/p999 ms: produced -> processed {}; processed -> read back {}",
                legs(&l.to_detect_ms),
                legs(&l.after_detect_ms)
            ));
            if let Some(r) = &l.relay {
                line(format!(
                    "  the relay's way in, produced -> consumed: {}",
                    legs(&r.in_ms)
                ));
            }
        }
        line(format!(
            "memory: +{:.1} MB resident for {} customers = {:.0} bytes/customer (engine estimate {:.0})",
            s.rss_delta() as f64 / 1e6,
            s.customers,
            s.bytes_per_customer(),
            s.state_bytes as f64 / s.customers.max(1) as f64
        ));
        if let Some(d) = s.alloc_delta() {
            let per = |b: i64| b as f64 / s.customers.max(1) as f64;
            line(format!(
                "  allocator (jemalloc) bytes/customer: allocated {:.0}, active {:.0}, resident {:.0}, metadata {:.0}",
                per(d[0].1),
                per(d[1].1),
                per(d[2].1),
                per(d[3].1)
            ));
        }
        line(format!(
            "alerts: {} acknowledged, {} on the alert topic ({} distinct ids); dead letters {}{}",
            s.alerts,
            s.alert_records,
            s.distinct_alert_ids,
            s.dead_letters,
            s.changelog_records.map_or(String::new(), |c| format!(
                "; changelog records {c} ({:.2} per event)",
                c as f64 / self.args.events as f64
            ))
        ));
        if let Some(Ok(p)) = &self.peer {
            line(p.alerts_line(&s.alerts_by_rule));
        }
        t
    }

    pub(crate) fn json(&self) -> Value {
        let mut v = self.json_without_peer();
        if let (Some(peer), Some(obj)) = (&self.peer, v.as_object_mut()) {
            let s = &self.sentinel.steady;
            let ok = peer.as_ref().ok();
            obj.insert("peer_events_per_s".into(), json!(ok.map(|p| p.events_per_s)));
            obj.insert(
                "peer_cpu_us_per_event".into(),
                json!(ok.map(|p| p.cpu_us_per_event)),
            );
            obj.insert(
                "peer_throughput_ratio".into(),
                json!(ok.map(|p| p.events_per_s / s.events_per_s().max(1e-9))),
            );
            obj.insert(
                "peer_cpu_ratio".into(),
                json!(ok.map(|p| p.cpu_us_per_event / s.cpu_us_per_event().max(1e-9))),
            );
            obj.insert("peer_alerts".into(), json!(ok.map(|p| p.alerts)));
            obj.insert(
                "peer".into(),
                match peer {
                    Ok(p) => p.json(),
                    Err(e) => {
                        json!({ "kind": value_name(self.args.peer.unwrap_or(PeerKind::Quix)), "error": e })
                    }
                },
            );
        }
        v
    }

    fn json_without_peer(&self) -> Value {
        let (b, s) = (&self.baseline, &self.sentinel);
        let lat = self.latency.as_ref();
        // The measure: produce time to the alert's acknowledgement.
        let q = |p: f64| lat.and_then(|l| l.acked_ms(p)).map(|b| b.estimate);
        json!({
            "events": self.args.events,
            "customers_generated": self.args.customers,
            "trouble_rate": self.args.trouble_rate,
            "partitions": self.args.partitions,
            "fetch_wait_ms": self.args.fetch_wait_ms,
            "changelog": self.config.state.changelog,
            "guarantee": self.guarantee(),
            "output_format": value_name(self.args.output_format),
            "baseline_kind": value_name(b.kind),
            "git_commit": git_commit(),
            "measured_at": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "produce_events_per_s": self.load.events as f64 / self.load.secs,
            "input_bytes": self.load.bytes,
            "baseline_events_per_s": b.steady.events_per_s(),
            "sentinel_events_per_s": s.steady.events_per_s(),
            "throughput_ratio": self.throughput_ratio(),
            "baseline_cpu_us_per_event": b.steady.cpu_us_per_event(),
            "sentinel_cpu_us_per_event": s.steady.cpu_us_per_event(),
            "cpu_ratio": self.cpu_ratio(),
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
            "p999_ms": q(0.999),
            "relay_p99_ms": lat.and_then(|l| l.relay.as_ref()).and_then(|r| quantile(&r.ack_ms, 0.99)),
            "bytes_per_customer": s.bytes_per_customer(),
            "baseline": {
                "steady": b.steady.json(),
                "total": b.total.json(),
                "cpu_s_by_thread": b.threads,
            },
            "sentinel": {
                "steady": s.steady.json(),
                "total": s.total.json(),
                "cpu_s_by_thread": s.threads,
                "alerts": s.alerts,
                "alerts_by_rule": s.alerts_by_rule,
                "alert_records_on_topic": s.alert_records,
                "distinct_alert_ids": s.distinct_alert_ids,
                "changelog_records": s.changelog_records,
                "dead_letters": s.dead_letters,
                "late_records": s.late,
                "produce_errors": s.produce_errors,
                "metrics_scrapes": s.scrapes,
                "metrics_scrape_share_of_cpu": s.scrape_share,
                "metrics_scrape_cpu_ms": s.scrape_cpu_ms,
                "metrics_scrape_wall_ms": s.scrape_wall_ms,
            },
            "memory": {
                "customers_in_state": s.customers,
                "rss_before_bytes": s.rss_before,
                "rss_after_bytes": s.rss_after,
                "rss_after_untrimmed_bytes": s.rss_after_raw,
                "bytes_per_customer": s.bytes_per_customer(),
                "engine_state_bytes": s.state_bytes,
                "engine_bytes_per_customer": s.state_bytes as f64 / s.customers.max(1) as f64,
                "allocator_delta_bytes": s.alloc_delta().map(|d| {
                    d.iter().map(|&(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()
                }),
            },
            "latency": lat.map(Latency::json),
        })
    }
}
