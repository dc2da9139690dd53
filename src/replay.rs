//! Offline replay: runs the engine over a file of touchpoints, in file order as the live service
//! does in offset order, and writes alerts.

use crate::codec::{DecodeError, Format, avro, json};
use crate::config::Config;
use crate::engine::{Effect, Engine, Stream};
use crate::model::{Millis, RecoveryAlert};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading input: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing output: {0}")]
    Write(#[source] std::io::Error),
    #[error("input is not an Avro object container file: {0}")]
    Container(DecodeError),
    #[error("replay reads json or avro files, not {0}")]
    Format(Format),
}

/// What a replay saw and did, for the summary on stderr.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReplaySummary {
    pub events: u64,
    pub applied: u64,
    pub rejected: u64,
    pub late: u64,
    pub future: u64,
    pub duplicates: u64,
    pub customers: usize,
    pub alerts: BTreeMap<(String, String), u64>,
}

impl std::fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "replay: {} events read, {} applied, {} duplicates, {} late (not applied), {} future (not applied), {} rejected; {} customers in state",
            self.events, self.applied, self.duplicates, self.late, self.future, self.rejected, self.customers
        )?;
        let total: u64 = self.alerts.values().sum();
        write!(f, "replay: {total} alerts")?;
        for ((rule, status), n) in &self.alerts {
            write!(f, "\n  {status:<9} {rule:<20} {n}")?;
        }
        Ok(())
    }
}

/// Runs the engine over `input` and writes each alert as a JSON line to `output`; per-record
/// problems go to `problems` as one line each, naming the line (or record) number.
///
/// `clock` is the processing clock: `detected_at`, and what a touchpoint's time is checked against
/// for `engine.max_clock_skew`. At the end of input the event-time clock moves to `until` (when
/// given and later than the newest event time) and every timer due by then fires, as on a live
/// partition that stays quiet until then.
pub fn replay(
    config: Config,
    input: impl BufRead,
    format: Format,
    output: &mut dyn Write,
    problems: &mut dyn Write,
    clock: &dyn Fn() -> Millis,
    until: Option<Millis>,
) -> Result<ReplaySummary, ReplayError> {
    let engine = Arc::new(Engine::new(config));
    let mut stream = Stream::new(engine.clone());
    let mut summary = ReplaySummary::default();
    let mut effects = Vec::new();
    let mut line_buf = Vec::new();
    let sensitive = |k: &str| engine.rules().is_sensitive(k);

    let mut handle = |n: u64,
                      decoded: Result<_, DecodeError>,
                      stream: &mut Stream,
                      summary: &mut ReplaySummary,
                      unit: &str|
     -> Result<(), ReplayError> {
        summary.events += 1;
        match decoded {
            Ok(tp) => {
                effects.clear();
                let now = clock();
                stream.push(tp, n, now, now, &mut effects);
                drain(&mut effects, output, problems, summary, unit)
            }
            Err(e) => {
                summary.rejected += 1;
                writeln!(problems, "{unit} {n}: rejected: {e}").map_err(ReplayError::Write)
            }
        }
    };

    match format {
        Format::Json => {
            let mut input = input;
            let mut n = 0u64;
            loop {
                line_buf.clear();
                let read = input
                    .read_until(b'\n', &mut line_buf)
                    .map_err(ReplayError::Read)?;
                if read == 0 {
                    break;
                }
                n += 1;
                let line = line_buf.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                handle(
                    n,
                    crate::codec::check_record_size(line)
                        .and_then(|()| json::decode_touchpoint(line, &sensitive)),
                    &mut stream,
                    &mut summary,
                    "line",
                )?;
            }
        }
        Format::Avro => {
            let records = avro::read_container(input).map_err(ReplayError::Container)?;
            for (i, r) in records.enumerate() {
                let r = r.and_then(|tp| crate::codec::validate(tp, &sensitive));
                handle(i as u64 + 1, r, &mut stream, &mut summary, "record")?;
            }
        }
        other => return Err(ReplayError::Format(other)),
    }
    effects.clear();
    stream.flush(until, clock(), &mut effects);
    drain(&mut effects, output, problems, &mut summary, "line")?;
    summary.customers = engine.customer_count();
    output.flush().map_err(ReplayError::Write)?;
    Ok(summary)
}

fn drain(
    effects: &mut Vec<Effect>,
    output: &mut dyn Write,
    problems: &mut dyn Write,
    summary: &mut ReplaySummary,
    unit: &str,
) -> Result<(), ReplayError> {
    let mut buf = Vec::new();
    for effect in effects.drain(..) {
        match effect {
            Effect::Alert { alert, .. } => {
                count_alert(summary, &alert);
                buf.clear();
                json::encode_alert(&alert, &mut buf);
                buf.push(b'\n');
                output.write_all(&buf).map_err(ReplayError::Write)?;
            }
            Effect::Applied { .. } => summary.applied += 1,
            Effect::Duplicate { .. } => summary.duplicates += 1,
            Effect::Late {
                seq,
                event,
                behind_ms,
            } => {
                summary.late += 1;
                writeln!(
                    problems,
                    "{unit} {seq}: late: event {} is {behind_ms} ms behind the watermark; counted, not applied",
                    event.event_id
                )
                .map_err(ReplayError::Write)?;
            }
            Effect::Future { seq, event, ahead_ms } => {
                summary.future += 1;
                writeln!(
                    problems,
                    "{unit} {seq}: future: event {} is stamped {ahead_ms} ms ahead of the processing clock; counted, not applied",
                    event.event_id
                )
                .map_err(ReplayError::Write)?;
            }
            Effect::Evicted { .. } => {}
        }
    }
    Ok(())
}

fn count_alert(summary: &mut ReplaySummary, alert: &RecoveryAlert) {
    *summary
        .alerts
        .entry((alert.rule.clone(), alert.status.as_str().to_string()))
        .or_default() += 1;
}
