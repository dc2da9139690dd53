//! `cx-sentinel report`: alerts (replay or tail `--json` output) and optionally the touchpoints
//! behind them, turned into one self-contained HTML page of charts and tables for a CX lead.
//!
//! [`analyze`] is pure (records in, numbers out) so the numbers are tested without a browser;
//! [`html`] draws the charts with plotters into inline SVG: no script or style is fetched when the
//! page is viewed.

pub mod charts;

use crate::model::{Direction, Millis, Outcome, TouchpointKind};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::io::BufRead;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading {what}: {source}")]
    Read {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("drawing chart '{chart}': {message}")]
    Chart { chart: &'static str, message: String },
}

/// What the report reads of an alert. Lenient on purpose: any status or rule string (a status
/// added after this build is shown as it is), extra fields ignored, optional ones defaulted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AlertRecord {
    #[serde(default)]
    pub alert_id: String,
    pub case_id: String,
    pub status: String,
    pub journey: String,
    pub rule: String,
    #[serde(default)]
    pub severity: String,
    #[serde(default)]
    pub recommended_channel: String,
    pub event_time: Millis,
    #[serde(default)]
    pub time_to_recover_ms: Option<i64>,
}

/// What the report reads of a touchpoint (the replay input).
#[derive(Debug, Clone, PartialEq)]
pub struct TouchpointRecord {
    pub customer_id: String,
    pub journey: String,
    pub inbound_interaction: bool,
    pub negative_outcome: bool,
}

/// Records read from a JSON-lines file, with the lines that were not records counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Lines<T> {
    pub records: Vec<T>,
    /// Line numbers that did not parse (at most the first 10 kept; `skipped` counts all).
    pub bad_lines: Vec<u64>,
    pub skipped: u64,
}

impl<T> Default for Lines<T> {
    fn default() -> Self {
        Self {
            records: Vec::new(),
            bad_lines: Vec::new(),
            skipped: 0,
        }
    }
}

impl<T> Lines<T> {
    fn bad(&mut self, n: u64) {
        self.skipped += 1;
        if self.bad_lines.len() < 10 {
            self.bad_lines.push(n);
        }
    }
}

/// Alerts from JSON lines. A line that is not an alert is counted and skipped (its content is not
/// echoed: it may hold customer data).
pub fn read_alerts(input: impl BufRead) -> Result<Lines<AlertRecord>, ReportError> {
    let mut out = Lines::default();
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(|source| ReportError::Read {
            what: "alerts",
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(a) => out.records.push(a),
            Err(_) => out.bad(i as u64 + 1),
        }
    }
    Ok(out)
}

/// Touchpoints from JSON lines (the replay input format; invalid ones counted and skipped).
pub fn read_touchpoints(input: impl BufRead) -> Result<Lines<TouchpointRecord>, ReportError> {
    let mut out = Lines::default();
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(|source| ReportError::Read {
            what: "touchpoints",
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        match crate::codec::json::decode_touchpoint(line.as_bytes(), &|_| false) {
            Ok(tp) => out.records.push(TouchpointRecord {
                inbound_interaction: tp.direction == Direction::Inbound
                    && tp.kind == TouchpointKind::Interaction,
                negative_outcome: matches!(
                    tp.outcome,
                    Outcome::Failure | Outcome::Abandoned | Outcome::Escalated
                ),
                customer_id: tp.customer_id,
                journey: tp.journey,
            }),
            Err(_) => out.bad(i as u64 + 1),
        }
    }
    Ok(out)
}

/// One recovery case, as its alerts tell it.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub case_id: String,
    /// Event time of the OPEN alert (of the first alert seen when the file starts mid-case).
    pub opened_at: Millis,
    /// The rule that opened it.
    pub rule: String,
    pub journey: String,
    pub channel: String,
    pub statuses: BTreeSet<String>,
    pub time_to_recover_ms: Option<i64>,
}

impl Case {
    pub fn recovered(&self) -> bool {
        self.statuses.contains("RECOVERED")
    }
}

/// A journey's line in the report.
#[derive(Debug, Clone, PartialEq)]
pub struct JourneyRow {
    pub journey: String,
    pub cases: u64,
    pub recovered: u64,
    pub escalated: u64,
    pub expired: u64,
    /// Cases opened by the effort rules (high_effort, channel_hopping).
    pub effort_cases: u64,
    pub median_recover_ms: Option<i64>,
}

impl JourneyRow {
    pub fn recovery_rate(&self) -> f64 {
        ratio(self.recovered, self.cases)
    }
}

/// Cases and recoveries by recommended channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelRow {
    pub channel: String,
    pub cases: u64,
    pub recovered: u64,
}

impl ChannelRow {
    pub fn recovery_rate(&self) -> f64 {
        ratio(self.recovered, self.cases)
    }
}

/// Customer effort on one journey, from the touchpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct EffortRow {
    pub journey: String,
    pub touchpoints: u64,
    /// INBOUND INTERACTIONs: the customer had to reach out.
    pub contacts: u64,
    pub customers: u64,
    pub negative: u64,
}

impl EffortRow {
    pub fn contacts_per_customer(&self) -> f64 {
        if self.customers == 0 {
            0.0
        } else {
            self.contacts as f64 / self.customers as f64
        }
    }
}

/// Nearest-rank quantiles of a duration, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantiles {
    pub count: u64,
    pub p50: i64,
    pub p90: i64,
    pub max: i64,
}

/// Time-to-recover histogram bucket upper bounds (ms) and labels; the last is open-ended.
pub const RECOVER_BUCKETS: [(i64, &str); 9] = [
    (15 * 60_000, "< 15 min"),
    (30 * 60_000, "15-30 min"),
    (3_600_000, "30-60 min"),
    (2 * 3_600_000, "1-2 h"),
    (4 * 3_600_000, "2-4 h"),
    (8 * 3_600_000, "4-8 h"),
    (24 * 3_600_000, "8-24 h"),
    (72 * 3_600_000, "1-3 d"),
    (i64::MAX, "> 3 d"),
];

/// Everything the page shows, computed from the records alone.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    pub alerts: u64,
    /// Alerts seen again with an `alert_id` already read (a redelivery): not counted twice.
    pub duplicate_alerts: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_rule: BTreeMap<String, u64>,
    pub cases: Vec<Case>,
    /// UTC day (YYYY-MM-DD) of opening -> opening rule -> cases.
    pub opened_per_day: BTreeMap<String, BTreeMap<String, u64>>,
    /// By cases, most first (ties by name).
    pub journeys: Vec<JourneyRow>,
    /// By cases, most first.
    pub channels: Vec<ChannelRow>,
    pub recover: Option<Quantiles>,
    /// Recoveries per [`RECOVER_BUCKETS`] bucket.
    pub recover_histogram: [u64; RECOVER_BUCKETS.len()],
    /// From the touchpoints, when given: by contacts, most first.
    pub effort: Option<Vec<EffortRow>>,
    pub first_event: Option<Millis>,
    pub last_event: Option<Millis>,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Nearest-rank quantile of sorted values.
fn rank(sorted: &[i64], q: f64) -> i64 {
    let k = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

fn quantiles(mut v: Vec<i64>) -> Option<Quantiles> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(Quantiles {
        count: v.len() as u64,
        p50: rank(&v, 0.5),
        p90: rank(&v, 0.9),
        max: *v.last().unwrap(),
    })
}

/// The UTC day of an epoch-ms instant, `YYYY-MM-DD`.
pub fn day(ms: Millis) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| "out of range".into())
}

const EFFORT_RULES: [&str; 2] = ["high_effort", "channel_hopping"];

/// The numbers of the report. Alerts are grouped into cases by `case_id`; an alert whose
/// `alert_id` was already seen is a redelivery and is counted once.
pub fn analyze(alerts: &[AlertRecord], touchpoints: Option<&[TouchpointRecord]>) -> Report {
    let mut r = Report::default();
    let mut seen = HashSet::new();
    let mut cases: BTreeMap<&str, Case> = BTreeMap::new();
    for a in alerts {
        if !a.alert_id.is_empty() && !seen.insert(a.alert_id.as_str()) {
            r.duplicate_alerts += 1;
            continue;
        }
        r.alerts += 1;
        *r.by_status.entry(a.status.clone()).or_default() += 1;
        *r.by_rule.entry(a.rule.clone()).or_default() += 1;
        r.first_event = Some(r.first_event.map_or(a.event_time, |t| t.min(a.event_time)));
        r.last_event = Some(r.last_event.map_or(a.event_time, |t| t.max(a.event_time)));
        let opening = a.status == "OPEN";
        let case = cases.entry(a.case_id.as_str()).or_insert_with(|| Case {
            case_id: a.case_id.clone(),
            opened_at: a.event_time,
            rule: a.rule.clone(),
            journey: a.journey.clone(),
            channel: a.recommended_channel.clone(),
            statuses: BTreeSet::new(),
            time_to_recover_ms: None,
        });
        if opening {
            case.opened_at = a.event_time;
            case.rule = a.rule.clone();
            case.channel = a.recommended_channel.clone();
        }
        case.statuses.insert(a.status.clone());
        if a.status == "RECOVERED" {
            case.time_to_recover_ms = a.time_to_recover_ms.or(case.time_to_recover_ms);
        }
    }
    r.cases = cases.into_values().collect();

    let mut journeys: BTreeMap<&str, (JourneyRow, Vec<i64>)> = BTreeMap::new();
    let mut channels: BTreeMap<&str, ChannelRow> = BTreeMap::new();
    let mut recover_all = Vec::new();
    for c in &r.cases {
        *r.opened_per_day
            .entry(day(c.opened_at))
            .or_default()
            .entry(c.rule.clone())
            .or_default() += 1;
        let (row, times) = journeys.entry(c.journey.as_str()).or_insert_with(|| {
            (
                JourneyRow {
                    journey: c.journey.clone(),
                    cases: 0,
                    recovered: 0,
                    escalated: 0,
                    expired: 0,
                    effort_cases: 0,
                    median_recover_ms: None,
                },
                Vec::new(),
            )
        });
        row.cases += 1;
        row.escalated += c.statuses.contains("ESCALATED") as u64;
        row.expired += c.statuses.contains("EXPIRED") as u64;
        row.effort_cases += EFFORT_RULES.contains(&c.rule.as_str()) as u64;
        let ch = channels.entry(c.channel.as_str()).or_insert_with(|| ChannelRow {
            channel: c.channel.clone(),
            cases: 0,
            recovered: 0,
        });
        ch.cases += 1;
        if c.recovered() {
            row.recovered += 1;
            ch.recovered += 1;
            if let Some(t) = c.time_to_recover_ms {
                times.push(t);
                recover_all.push(t);
                let b = RECOVER_BUCKETS
                    .iter()
                    .position(|(upper, _)| t < *upper)
                    .unwrap_or(0);
                r.recover_histogram[b] += 1;
            }
        }
    }
    r.journeys = journeys
        .into_values()
        .map(|(mut row, times)| {
            row.median_recover_ms = quantiles(times).map(|q| q.p50);
            row
        })
        .collect();
    r.journeys
        .sort_by(|a, b| b.cases.cmp(&a.cases).then_with(|| a.journey.cmp(&b.journey)));
    r.channels = channels.into_values().collect();
    r.channels
        .sort_by(|a, b| b.cases.cmp(&a.cases).then_with(|| a.channel.cmp(&b.channel)));
    r.recover = quantiles(recover_all);

    r.effort = touchpoints.map(|tps| {
        let mut rows: BTreeMap<&str, (EffortRow, HashSet<&str>)> = BTreeMap::new();
        for tp in tps {
            let (row, customers) = rows.entry(tp.journey.as_str()).or_insert_with(|| {
                (
                    EffortRow {
                        journey: tp.journey.clone(),
                        touchpoints: 0,
                        contacts: 0,
                        customers: 0,
                        negative: 0,
                    },
                    HashSet::new(),
                )
            });
            row.touchpoints += 1;
            row.contacts += tp.inbound_interaction as u64;
            row.negative += tp.negative_outcome as u64;
            customers.insert(tp.customer_id.as_str());
        }
        let mut rows: Vec<EffortRow> = rows
            .into_values()
            .map(|(mut row, customers)| {
                row.customers = customers.len() as u64;
                row
            })
            .collect();
        rows.sort_by(|a, b| {
            b.contacts
                .cmp(&a.contacts)
                .then_with(|| a.journey.cmp(&b.journey))
        });
        rows
    });
    r
}

/// `3 h 05 min`, `12 min`, `2 d 4 h`: a duration a person reads.
pub fn human_ms(ms: i64) -> String {
    let min = ms / 60_000;
    match min {
        m if m < 60 => format!("{m} min"),
        m if m < 24 * 60 => format!("{} h {:02} min", m / 60, m % 60),
        m => format!("{} d {} h", m / (24 * 60), m % (24 * 60) / 60),
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn pct(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

/// Rows shown in the ranked charts.
const TOP: usize = 10;

/// The charts, each `(id, title, svg)`, in page order.
pub fn charts(r: &Report) -> Result<Vec<(&'static str, String, String)>, ReportError> {
    let err = |chart: &'static str| move |message| ReportError::Chart { chart, message };
    let mut out = Vec::new();

    // Days as MM-DD when they all fall in one year (the summary line names the span).
    let one_year = r
        .opened_per_day
        .keys()
        .map(|d| &d[..4.min(d.len())])
        .collect::<BTreeSet<_>>()
        .len()
        == 1;
    let days: Vec<String> = r
        .opened_per_day
        .keys()
        .map(|d| {
            if one_year && d.len() == 10 {
                d[5..].to_string()
            } else {
                d.clone()
            }
        })
        .collect();
    let rules: BTreeSet<&String> = r.opened_per_day.values().flat_map(|m| m.keys()).collect();
    let series: Vec<(String, Vec<f64>)> = rules
        .iter()
        .map(|rule| {
            let v = r
                .opened_per_day
                .values()
                .map(|m| m.get(*rule).copied().unwrap_or(0) as f64)
                .collect();
            ((*rule).clone(), v)
        })
        .collect();
    let title = "Cases opened per day, by rule".to_string();
    let svg = charts::stacked_columns(&title, &days, &series, "cases").map_err(err("opened-per-day"))?;
    out.push(("opened-per-day", title, svg));

    let top: Vec<&JourneyRow> = r.journeys.iter().take(TOP).collect();
    let names: Vec<String> = top.iter().map(|j| j.journey.clone()).collect();
    let count = |v: f64| format!("{v:.0}");
    let title = "Journeys with the most cases".to_string();
    let values: Vec<f64> = top.iter().map(|j| j.cases as f64).collect();
    let svg = charts::bars(&title, &names, &values, None, "cases", &count).map_err(err("journey-cases"))?;
    out.push(("journey-cases", title, svg));

    let (title, names, values, desc) = match &r.effort {
        Some(rows) => {
            let top: Vec<&EffortRow> = rows.iter().take(TOP).collect();
            (
                "Journeys with the most effort: customer contacts (inbound interactions)".to_string(),
                top.iter().map(|e| e.journey.clone()).collect::<Vec<_>>(),
                top.iter().map(|e| e.contacts as f64).collect::<Vec<_>>(),
                "contacts",
            )
        }
        None => {
            let mut rows: Vec<&JourneyRow> = r.journeys.iter().filter(|j| j.effort_cases > 0).collect();
            rows.sort_by(|a, b| {
                b.effort_cases
                    .cmp(&a.effort_cases)
                    .then_with(|| a.journey.cmp(&b.journey))
            });
            rows.truncate(TOP);
            (
                "Journeys with the most effort: cases opened by high_effort and channel_hopping".to_string(),
                rows.iter().map(|j| j.journey.clone()).collect(),
                rows.iter().map(|j| j.effort_cases as f64).collect(),
                "cases",
            )
        }
    };
    let svg = charts::bars(&title, &names, &values, None, desc, &count).map_err(err("journey-effort"))?;
    out.push(("journey-effort", title, svg));

    let title = "Time to recover (cases that recovered)".to_string();
    let buckets: Vec<String> = RECOVER_BUCKETS.iter().map(|(_, l)| l.to_string()).collect();
    let values: Vec<f64> = r.recover_histogram.iter().map(|v| *v as f64).collect();
    let svg = charts::stacked_columns(&title, &buckets, &[("recovered".into(), values)], "cases")
        .map_err(err("time-to-recover"))?;
    out.push(("time-to-recover", title, svg));

    let percent = |v: f64| format!("{v:.0}%");
    let title = "Recovery rate by journey (most cases first)".to_string();
    let names: Vec<String> = top.iter().map(|j| j.journey.clone()).collect();
    let values: Vec<f64> = top.iter().map(|j| j.recovery_rate() * 100.0).collect();
    let svg = charts::bars(
        &title,
        &names,
        &values,
        Some(100.0),
        "% of cases recovered",
        &percent,
    )
    .map_err(err("recovery-by-journey"))?;
    out.push(("recovery-by-journey", title, svg));

    let title = "Recovery rate by recommended channel".to_string();
    let names: Vec<String> = r.channels.iter().map(|c| c.channel.clone()).collect();
    let values: Vec<f64> = r.channels.iter().map(|c| c.recovery_rate() * 100.0).collect();
    let svg = charts::bars(
        &title,
        &names,
        &values,
        Some(100.0),
        "% of cases recovered",
        &percent,
    )
    .map_err(err("recovery-by-channel"))?;
    out.push(("recovery-by-channel", title, svg));
    Ok(out)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1560px;color:#222;padding:0 16px}\
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px}.sub{color:#666;margin-top:0}\
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(760px,1fr));gap:16px}\
figure.chart{margin:0;border:1px solid #ddd;border-radius:6px;padding:6px;background:#fff}\
figure.chart svg{display:block;max-width:100%;height:auto}figcaption{font-size:12px;color:#666;padding:4px}\
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border-bottom:1px solid #e4e4e4;padding:4px 10px;text-align:right}\
th:first-child,td:first-child{text-align:left}th{background:#f6f6f6}.tables{display:flex;flex-wrap:wrap;gap:32px;align-items:flex-start}caption{font-weight:600;text-align:left;padding:4px 0}";

/// Marks each chart with the size the browser laid it out at, how many shapes it drew and how
/// many of them are filled bars (or legend swatches) with a non-zero rendered size, so a headless
/// browser's DOM dump shows the charts rendered (tests/report.rs). Runs locally; the page loads
/// nothing.
const SELF_CHECK: &str = "<script>(function(){var ok=0;document.querySelectorAll('figure.chart').forEach(function(f){\
var s=f.querySelector('svg');var b=s?s.getBoundingClientRect():{width:0,height:0};\
var shapes=s?s.querySelectorAll('rect,polyline,path,line,circle').length:0;var bars=0;\
if(s)s.querySelectorAll('rect').forEach(function(r){var fill=(r.getAttribute('fill')||'').toUpperCase();\
var k=r.getBoundingClientRect();if(fill!=='NONE'&&fill!=='#FFFFFF'&&k.width>0.5&&k.height>0.5)bars++;});\
f.setAttribute('data-rendered',Math.round(b.width)+'x'+Math.round(b.height));f.setAttribute('data-shapes',shapes);\
f.setAttribute('data-bars',bars);if(b.width>0&&b.height>0&&bars>0)ok++;});\
document.body.setAttribute('data-charts-rendered',ok);})();</script>";

fn table(out: &mut String, id: &str, caption: &str, head: &[&str], rows: &[Vec<String>]) {
    let _ = write!(out, "<table id=\"{id}\"><caption>{}</caption><tr>", esc(caption));
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", esc(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

/// The whole page: a summary, the charts as inline SVG, and the tables behind them.
pub fn html(r: &Report, title: &str, skipped_lines: u64) -> Result<String, ReportError> {
    let mut out = String::new();
    let span = match (r.first_event, r.last_event) {
        (Some(a), Some(b)) => format!("{} to {} (event time, UTC)", day(a), day(b)),
        _ => "no alerts".into(),
    };
    let recovered = r.cases.iter().filter(|c| c.recovered()).count() as u64;
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body>\
<h1>{t}</h1><p class=\"sub\" id=\"summary\">{span}: {a} alerts, {c} cases, {rc} recovered ({rate}).{dups}{skip}</p>",
        t = esc(title),
        a = r.alerts,
        c = r.cases.len(),
        rc = recovered,
        rate = pct(ratio(recovered, r.cases.len() as u64)),
        dups = if r.duplicate_alerts > 0 {
            format!(" {} redelivered alerts counted once.", r.duplicate_alerts)
        } else {
            String::new()
        },
        skip = if skipped_lines > 0 {
            format!(" {skipped_lines} lines were not records and were skipped.")
        } else {
            String::new()
        },
    );
    out.push_str("<div class=\"charts\">");
    for (id, title, svg) in charts(r)? {
        let _ = write!(
            out,
            "<figure class=\"chart\" id=\"chart-{id}\" aria-label=\"{t}\">{svg}<figcaption>{t}</figcaption></figure>",
            t = esc(&title)
        );
    }
    out.push_str("</div><h2>Tables</h2><div class=\"tables\">");

    let rules: BTreeSet<&String> = r.opened_per_day.values().flat_map(|m| m.keys()).collect();
    let mut head = vec!["day"];
    head.extend(rules.iter().map(|s| s.as_str()));
    head.push("total");
    let rows: Vec<Vec<String>> = r
        .opened_per_day
        .iter()
        .map(|(d, m)| {
            let mut row = vec![d.clone()];
            row.extend(
                rules
                    .iter()
                    .map(|rule| m.get(*rule).copied().unwrap_or(0).to_string()),
            );
            row.push(m.values().sum::<u64>().to_string());
            row
        })
        .collect();
    table(
        &mut out,
        "opened-per-day",
        "Cases opened per day by rule",
        &head,
        &rows,
    );

    let rows: Vec<Vec<String>> = r
        .journeys
        .iter()
        .map(|j| {
            vec![
                j.journey.clone(),
                j.cases.to_string(),
                j.recovered.to_string(),
                pct(j.recovery_rate()),
                j.escalated.to_string(),
                j.expired.to_string(),
                j.effort_cases.to_string(),
                j.median_recover_ms.map(human_ms).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &mut out,
        "journeys",
        "Journeys",
        &[
            "journey",
            "cases",
            "recovered",
            "recovery rate",
            "escalated",
            "expired",
            "effort cases",
            "median time to recover",
        ],
        &rows,
    );

    let rows: Vec<Vec<String>> = r
        .channels
        .iter()
        .map(|c| {
            vec![
                c.channel.clone(),
                c.cases.to_string(),
                c.recovered.to_string(),
                pct(c.recovery_rate()),
            ]
        })
        .collect();
    table(
        &mut out,
        "channels",
        "Recommended channel",
        &["channel", "cases", "recovered", "recovery rate"],
        &rows,
    );

    let rows: Vec<Vec<String>> = match r.recover {
        Some(q) => vec![vec![
            "recover".into(),
            q.count.to_string(),
            human_ms(q.p50),
            human_ms(q.p90),
            human_ms(q.max),
        ]],
        None => vec![],
    };
    table(
        &mut out,
        "time-to",
        "Time to (acknowledge and resolve: once case actions exist)",
        &["from opening to", "cases", "p50", "p90", "max"],
        &rows,
    );

    let rows: Vec<Vec<String>> = r
        .by_status
        .iter()
        .map(|(s, n)| vec![s.clone(), n.to_string()])
        .collect();
    table(
        &mut out,
        "statuses",
        "Alerts by status",
        &["status", "alerts"],
        &rows,
    );
    let rows: Vec<Vec<String>> = r
        .by_rule
        .iter()
        .map(|(s, n)| vec![s.clone(), n.to_string()])
        .collect();
    table(&mut out, "rules", "Alerts by rule", &["rule", "alerts"], &rows);

    if let Some(effort) = &r.effort {
        let rows: Vec<Vec<String>> = effort
            .iter()
            .map(|e| {
                vec![
                    e.journey.clone(),
                    e.touchpoints.to_string(),
                    e.contacts.to_string(),
                    e.customers.to_string(),
                    format!("{:.2}", e.contacts_per_customer()),
                    e.negative.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            "effort",
            "Effort by journey (touchpoints)",
            &[
                "journey",
                "touchpoints",
                "contacts (inbound interactions)",
                "customers",
                "contacts per customer",
                "negative outcomes",
            ],
            &rows,
        );
    }
    out.push_str("</div>");
    out.push_str(SELF_CHECK);
    out.push_str("</body></html>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(
        id: &str,
        case: &str,
        status: &str,
        rule: &str,
        journey: &str,
        t: i64,
        ttr: Option<i64>,
    ) -> AlertRecord {
        AlertRecord {
            alert_id: id.into(),
            case_id: case.into(),
            status: status.into(),
            journey: journey.into(),
            rule: rule.into(),
            severity: "HIGH".into(),
            recommended_channel: "VOICE".into(),
            event_time: t,
            time_to_recover_ms: ttr,
        }
    }

    const DAY: i64 = 86_400_000;

    #[test]
    fn cases_days_rates_and_unknown_statuses() {
        let alerts = vec![
            alert("a1", "c1", "OPEN", "critical_negative", "billing", 0, None),
            alert(
                "a2",
                "c1",
                "RECOVERED",
                "recovered",
                "billing",
                3_600_000,
                Some(3_600_000),
            ),
            alert(
                "a2",
                "c1",
                "RECOVERED",
                "recovered",
                "billing",
                3_600_000,
                Some(3_600_000),
            ),
            alert("a3", "c2", "OPEN", "high_effort", "billing", DAY, None),
            alert("a4", "c2", "WITHDRAWN", "correction", "billing", DAY + 1, None),
            alert("a5", "c3", "OPEN", "critical_negative", "delivery", DAY + 5, None),
            alert("a6", "c3", "EXPIRED", "case_expired", "delivery", 31 * DAY, None),
        ];
        let r = analyze(&alerts, None);
        assert_eq!(r.alerts, 6);
        assert_eq!(r.duplicate_alerts, 1);
        assert_eq!(r.by_status["WITHDRAWN"], 1);
        assert_eq!(r.cases.len(), 3);
        assert_eq!(r.opened_per_day["1970-01-01"]["critical_negative"], 1);
        assert_eq!(r.opened_per_day["1970-01-02"]["high_effort"], 1);
        assert_eq!(r.journeys[0].journey, "billing");
        assert_eq!(
            (
                r.journeys[0].cases,
                r.journeys[0].recovered,
                r.journeys[0].effort_cases
            ),
            (2, 1, 1)
        );
        assert_eq!(r.journeys[0].recovery_rate(), 0.5);
        assert_eq!(r.journeys[1].expired, 1);
        assert_eq!(
            r.channels,
            vec![ChannelRow {
                channel: "VOICE".into(),
                cases: 3,
                recovered: 1
            }]
        );
        assert_eq!(
            r.recover,
            Some(Quantiles {
                count: 1,
                p50: 3_600_000,
                p90: 3_600_000,
                max: 3_600_000
            })
        );
        assert_eq!(r.recover_histogram[3], 1, "1 h falls in 1-2 h");
        let page = html(&r, "t", 0).unwrap();
        assert!(page.contains("<td>WITHDRAWN</td>"));
        assert_eq!(page.matches("<figure class=\"chart\"").count(), 6);
        assert!(
            !page.contains("<link") && !page.contains(" src=") && !page.contains("@import"),
            "nothing fetched at view time"
        );
    }

    #[test]
    fn empty_input_gives_a_page() {
        let r = analyze(&[], Some(&[]));
        let page = html(&r, "empty", 3).unwrap();
        assert!(page.contains("no alerts: 0 alerts, 0 cases"));
        assert!(page.contains("3 lines were not records"));
    }

    #[test]
    fn lenient_reading_counts_bad_lines() {
        let text = "{\"case_id\":\"c\",\"status\":\"NEW_STATUS\",\"journey\":\"j\",\"rule\":\"r\",\"event_time\":5,\"extra\":1}\n\nnot json\n{}\n";
        let lines = read_alerts(text.as_bytes()).unwrap();
        assert_eq!(lines.records.len(), 1);
        assert_eq!(lines.records[0].status, "NEW_STATUS");
        assert_eq!((lines.skipped, lines.bad_lines.clone()), (2, vec![3, 4]));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_ms(59_000), "0 min");
        assert_eq!(human_ms(3_900_000), "1 h 05 min");
        assert_eq!(human_ms(2 * DAY + 4 * 3_600_000), "2 d 4 h");
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let q = quantiles((1..=10).collect()).unwrap();
        assert_eq!((q.p50, q.p90, q.max), (5, 9, 10));
    }
}
