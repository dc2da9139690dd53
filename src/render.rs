//! One readable line per recovery alert, shared by `tail` and `demo`: event time, severity,
//! status, customer, journey, rule, recommended channel, queue (when routed, not `default`) and
//! reason, with ANSI colour for a terminal.
//!
//! It reads the alert as JSON, so a status, severity or field added after this build is shown as
//! it is rather than refused.

use crate::model::RecoveryAlert;
use serde_json::Value;
use std::fmt::Write as _;

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const MAGENTA: &str = "\x1b[35m";
const CYAN: &str = "\x1b[36m";

/// Whether to colour output written to stdout: a terminal, and `NO_COLOR` unset (no-color.org).
pub fn stdout_wants_color() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `2026-03-01 10:04:00Z` (UTC, seconds).
pub fn time(ms: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000) else {
        return ms.to_string();
    };
    format!(
        "{} {:02}:{:02}:{:02}Z",
        t.date(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn severity_color(s: &str) -> &'static str {
    match s {
        "CRITICAL" => "\x1b[1;31m",
        "HIGH" => RED,
        "MEDIUM" => YELLOW,
        "LOW" => DIM,
        _ => "",
    }
}

fn status_color(s: &str) -> &'static str {
    match s {
        "OPEN" => BOLD,
        "ESCALATED" => MAGENTA,
        "RECOVERED" => GREEN,
        "EXPIRED" => DIM,
        _ => CYAN,
    }
}

fn text<'a>(alert: &'a Value, key: &str) -> &'a str {
    alert.get(key).and_then(Value::as_str).unwrap_or("?")
}

/// The alert on one line (no newline), e.g.
/// `2026-03-01 10:04:00Z HIGH     OPEN      cust-7 billing critical_negative -> VOICE: payment.transfer failed ...`.
/// Missing fields show as `?`; control characters in values are replaced so one alert stays one line.
pub fn line(alert: &Value, color: bool) -> String {
    let paint = |out: &mut String, code: &str, s: &str, width: usize| {
        let s = one_line(s);
        if color && !code.is_empty() {
            let _ = write!(out, "{code}{s:<width$}{RESET}");
        } else {
            let _ = write!(out, "{s:<width$}");
        }
    };
    let mut out = String::with_capacity(160);
    let at = alert.get("event_time").and_then(Value::as_i64).map(time);
    paint(&mut out, DIM, at.as_deref().unwrap_or("?"), 0);
    out.push(' ');
    let severity = text(alert, "severity");
    paint(&mut out, severity_color(severity), severity, 8);
    out.push(' ');
    let status = text(alert, "status");
    paint(&mut out, status_color(status), status, 9);
    out.push(' ');
    paint(&mut out, BOLD, text(alert, "customer_id"), 0);
    out.push(' ');
    out.push_str(&one_line(text(alert, "journey")));
    out.push(' ');
    out.push_str(&one_line(text(alert, "rule")));
    if let Some(channel) = alert.get("recommended_channel").and_then(Value::as_str) {
        out.push_str(" -> ");
        out.push_str(&one_line(channel));
    }
    // The default queue says nothing a reader needs: only a routed case names its team.
    if let Some(queue) = alert
        .get("queue")
        .and_then(Value::as_str)
        .filter(|q| *q != "default")
    {
        out.push_str(" queue=");
        out.push_str(&one_line(queue));
    }
    if let Some(ttr) = alert.get("time_to_recover_ms").and_then(Value::as_i64) {
        let _ = write!(out, " (recovered in {})", crate::report::human_ms(ttr));
    }
    out.push_str(": ");
    out.push_str(&one_line(text(alert, "reason")));
    out
}

/// [`line`] for a decoded alert.
pub fn alert_line(alert: &RecoveryAlert, color: bool) -> String {
    line(
        &serde_json::to_value(alert).expect("an alert always serializes"),
        color,
    )
}

fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Value {
        serde_json::json!({
            "alert_id": "a", "case_id": "c", "status": "OPEN", "customer_id": "cust-7",
            "journey": "billing", "rule": "critical_negative", "severity": "HIGH",
            "recommended_channel": "VOICE", "reason": "payment failed", "event_time": 1_772_359_440_000i64
        })
    }

    #[test]
    fn plain_line_has_every_field_and_no_escape_codes() {
        assert_eq!(
            line(&alert(), false),
            "2026-03-01 10:04:00Z HIGH     OPEN      cust-7 billing critical_negative -> VOICE: payment failed"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let l = line(&alert(), true);
        assert!(l.contains("\x1b[31mHIGH    \x1b[0m"), "{l:?}");
        assert!(!line(&alert(), false).contains('\x1b'));
    }

    #[test]
    fn unknown_status_queue_and_recovery_time_shown_as_is() {
        let mut a = alert();
        a["status"] = "WITHDRAWN".into();
        a["queue"] = "billing-tier2".into();
        a["time_to_recover_ms"] = 3_900_000.into();
        a["reason"] = "two\nlines".into();
        assert_eq!(
            line(&a, false),
            "2026-03-01 10:04:00Z HIGH     WITHDRAWN cust-7 billing critical_negative -> VOICE queue=billing-tier2 (recovered in 1 h 05 min): two lines"
        );
        let empty = line(&serde_json::json!({}), false);
        assert_eq!(empty, "? ?        ?         ? ? ?: ?");
    }
}
