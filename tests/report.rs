//! `cx-sentinel report` on a fixed input: `tests/fixtures/report/alerts.jsonl` (every golden
//! scenario's expected alerts, plus a redelivered alert, an alert with a status this build does
//! not know, and a line that is not an alert) and the scenarios' touchpoints. Golden numbers for
//! the tables, checked by hand against the scenarios; then the page in headless Chromium: every
//! chart laid out with shapes drawn (DOM dump) and a screenshot in
//! `target/test-output/report/` for a person to look at.

mod common;

use common::tools::{output_dir, tool};
use cx_sentinel::report::{self, ChannelRow, Quantiles};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/report")
        .join(name)
}

fn read(name: &str) -> std::io::BufReader<std::fs::File> {
    std::io::BufReader::new(std::fs::File::open(fixture(name)).unwrap())
}

fn fixture_report() -> report::Report {
    let alerts = report::read_alerts(read("alerts.jsonl")).unwrap();
    assert_eq!((alerts.skipped, alerts.bad_lines.as_slice()), (1, &[13][..]));
    let tps = report::read_touchpoints(read("touchpoints.jsonl")).unwrap();
    assert_eq!(tps.skipped, 0);
    report::analyze(&alerts.records, Some(&tps.records))
}

#[test]
fn golden_numbers() {
    let r = fixture_report();
    assert_eq!(r.alerts, 11);
    assert_eq!(r.duplicate_alerts, 1);
    let statuses: Vec<(&str, u64)> = r.by_status.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    assert_eq!(
        statuses,
        [
            ("ESCALATED", 2),
            ("EXPIRED", 1),
            ("OPEN", 6),
            ("RECOVERED", 1),
            ("WITHDRAWN", 1)
        ]
    );
    assert_eq!(r.cases.len(), 6);
    // Every case opened on 2026-03-02 (UTC): five critical negatives and one high effort.
    let days: Vec<(&str, Vec<(&str, u64)>)> = r
        .opened_per_day
        .iter()
        .map(|(d, m)| (d.as_str(), m.iter().map(|(k, v)| (k.as_str(), *v)).collect()))
        .collect();
    assert_eq!(
        days,
        [("2026-03-02", vec![("critical_negative", 5), ("high_effort", 1)])]
    );
    // One case per journey, so by name; parcel recovered after 2 h (failure_then_callback).
    // journey, cases, recovered, escalated, expired, effort cases, median time to recover
    type Row<'a> = (&'a str, u64, u64, u64, u64, u64, Option<i64>);
    let journeys: Vec<Row> = r
        .journeys
        .iter()
        .map(|j| {
            (
                j.journey.as_str(),
                j.cases,
                j.recovered,
                j.escalated,
                j.expired,
                j.effort_cases,
                j.median_recover_ms,
            )
        })
        .collect();
    assert_eq!(
        journeys,
        [
            ("cancellation", 1, 0, 1, 0, 1, None),
            ("dinner-reservation", 1, 0, 0, 0, 0, None),
            ("insurance-claim", 1, 0, 1, 1, 0, None),
            ("lab-results", 1, 0, 0, 0, 0, None),
            ("parcel", 1, 1, 0, 0, 0, Some(7_200_000)),
            ("payment", 1, 0, 0, 0, 0, None),
        ]
    );
    assert_eq!(
        r.channels,
        [ChannelRow {
            channel: "VOICE".into(),
            cases: 6,
            recovered: 1
        }]
    );
    assert_eq!(
        r.recover,
        Some(Quantiles {
            count: 1,
            p50: 7_200_000,
            p90: 7_200_000,
            max: 7_200_000
        })
    );
    assert_eq!(
        r.recover_histogram,
        [0, 0, 0, 0, 1, 0, 0, 0, 0],
        "2 h is in 2-4 h"
    );
    // Effort from the 42 touchpoints: isp_cancellation_loop's six inbound contacts lead.
    let effort: Vec<(&str, u64, u64, u64, u64)> = r
        .effort
        .as_ref()
        .unwrap()
        .iter()
        .take(4)
        .map(|e| {
            (
                e.journey.as_str(),
                e.touchpoints,
                e.contacts,
                e.customers,
                e.negative,
            )
        })
        .collect();
    assert_eq!(
        effort,
        [
            ("cancellation", 6, 6, 1, 4),
            ("faq", 3, 3, 1, 0),
            ("payment", 3, 3, 2, 1),
            ("dinner-reservation", 3, 2, 1, 2),
        ]
    );
    assert_eq!(
        r.effort
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.touchpoints)
            .sum::<u64>(),
        42
    );
}

/// The binary end to end: the page's tables carry the golden numbers.
fn build_page(dir: &Path) -> PathBuf {
    let page = dir.join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_cx-sentinel"))
        .args(["report", "--input"])
        .arg(fixture("alerts.jsonl"))
        .arg("--touchpoints")
        .arg(fixture("touchpoints.jsonl"))
        .arg("--output")
        .arg(&page)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 alerts lines skipped (not records), first at lines [13]"),
        "{stderr}"
    );
    assert!(stderr.contains("report: 11 alerts, 6 cases"), "{stderr}");
    page
}

#[test]
fn page_tables_carry_the_golden_numbers() {
    let dir = output_dir("report-tables");
    let html = std::fs::read_to_string(build_page(&dir)).unwrap();
    for row in [
        "<tr><td>2026-03-02</td><td>5</td><td>1</td><td>6</td></tr>",
        "<tr><td>parcel</td><td>1</td><td>1</td><td>100%</td><td>0</td><td>0</td><td>0</td><td>2 h 00 min</td></tr>",
        "<tr><td>VOICE</td><td>6</td><td>1</td><td>17%</td></tr>",
        "<tr><td>recover</td><td>1</td><td>2 h 00 min</td><td>2 h 00 min</td><td>2 h 00 min</td></tr>",
        "<tr><td>WITHDRAWN</td><td>1</td></tr>",
        "<tr><td>cancellation</td><td>6</td><td>6</td><td>1</td><td>6.00</td><td>4</td></tr>",
    ] {
        assert!(html.contains(row), "missing {row}");
    }
    assert!(html.contains("11 alerts, 6 cases, 1 recovered (17%). 1 redelivered alerts counted once."));
}

/// Runs headless Chromium with `args` on `page`, killed after a minute.
fn chromium(bin: &Path, profile: &Path, args: &[String], page: &Path) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}

/// `data-name="value"` inside the tag that starts at `at`.
fn attribute<'a>(dom: &'a str, at: usize, name: &str) -> Option<&'a str> {
    let tag = &dom[at..at + dom[at..].find('>')?];
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    Some(&tag[start..start + tag[start..].find('"')?])
}

#[test]
fn charts_render_in_headless_chromium() {
    let Some(bin) = tool("CX_CHROMIUM", "chromium", "scripts/chromium.sh") else {
        return;
    };
    let dir = output_dir("report");
    let page = build_page(&dir);
    let profile = tempfile::tempdir().unwrap();

    let dom = chromium(&bin, profile.path(), &["--dump-dom".into()], &page);
    let body = dom.find("<body").expect("a body in the DOM dump");
    assert_eq!(attribute(&dom, body, "data-charts-rendered"), Some("6"), "{dom}");
    // Bars with a visible size (legend swatches included): one per non-zero value.
    for (id, bars, must_show) in [
        // Two rules on one day, and their two legend swatches.
        (
            "opened-per-day",
            4,
            vec!["03-02", "critical_negative", "high_effort"],
        ),
        ("journey-cases", 6, vec!["parcel", "insurance-claim"]),
        ("journey-effort", 10, vec!["cancellation", "faq"]),
        ("time-to-recover", 1, vec!["2-4 h"]),
        // Only parcel recovered: the five 0% bars have no width.
        ("recovery-by-journey", 1, vec!["100%", "0%"]),
        ("recovery-by-channel", 1, vec!["VOICE", "17%"]),
    ] {
        let at = dom
            .find(&format!("id=\"chart-{id}\""))
            .map(|i| dom[..i].rfind('<').unwrap())
            .unwrap_or_else(|| panic!("chart {id} missing from the DOM"));
        let size = attribute(&dom, at, "data-rendered").unwrap();
        let (w, h) = size.split_once('x').unwrap();
        let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
        assert!(w >= 300 && h >= 100, "chart {id} laid out at {size}");
        let shapes: u32 = attribute(&dom, at, "data-shapes").unwrap().parse().unwrap();
        assert!(shapes >= 5, "chart {id} drew {shapes} shapes");
        let drawn: u32 = attribute(&dom, at, "data-bars").unwrap().parse().unwrap();
        assert_eq!(drawn, bars, "chart {id}: visible bars");
        let figure = &dom[at..at + dom[at..].find("</figure>").unwrap()];
        for text in must_show {
            // plotters writes each text on its own line inside <text>.
            assert!(
                figure.contains(&format!(">\n{text}\n<")),
                "chart {id} does not show {text}"
            );
        }
    }

    let shot = dir.join("report.png");
    chromium(
        &bin,
        profile.path(),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1600,2000".into(),
        ],
        &page,
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 20_000, "screenshot is {} bytes: blank?", png.len());
    eprintln!("screenshot: {}", shot.display());
}
