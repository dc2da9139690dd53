//! Offline replay: runs the engine over a file of touchpoints, in file order as the live service
//! does in offset order, and writes alerts. Agents' case actions (`--actions`) are merged in by
//! event time, so rules and SLAs can be tuned offline against what the agents really did.

use crate::codec::{DecodeError, Format, avro, json};
use crate::config::Config;
use crate::engine::{Effect, Engine, Stream};
use crate::model::{CaseAction, Millis, RecoveryAlert};
use std::collections::{BTreeMap, VecDeque};
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
    #[error("reading actions: {0}")]
    Actions(#[source] std::io::Error),
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
    /// Case actions read (`--actions`), and of those rejected (undecodable or not applicable).
    pub actions: u64,
    pub actions_rejected: u64,
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
        if self.actions > 0 {
            writeln!(
                f,
                "replay: {} case actions read, {} rejected",
                self.actions, self.actions_rejected
            )?;
        }
        let total: u64 = self.alerts.values().sum();
        write!(f, "replay: {total} alerts")?;
        for ((rule, status), n) in &self.alerts {
            write!(f, "\n  {status:<12} {rule:<20} {n}")?;
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
    replay_with_actions(config, input, format, None, output, problems, clock, until)
}

/// Agents' actions waiting for the touchpoints' event time to reach them: (line, action), in
/// event time order.
struct Pending(VecDeque<(u64, CaseAction)>);

impl Pending {
    /// Reads JSON lines of `CaseAction`; an undecodable line is reported and counted.
    fn read(
        actions: &mut dyn BufRead,
        problems: &mut dyn Write,
        summary: &mut ReplaySummary,
    ) -> Result<Self, ReplayError> {
        let mut all = Vec::new();
        let mut line = Vec::new();
        let mut n = 0u64;
        loop {
            line.clear();
            if actions
                .read_until(b'\n', &mut line)
                .map_err(ReplayError::Actions)?
                == 0
            {
                break;
            }
            n += 1;
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            summary.actions += 1;
            match crate::codec::check_record_size(text).and_then(|()| json::decode_action(text)) {
                Ok(a) => all.push((n, a)),
                Err(e) => {
                    summary.actions_rejected += 1;
                    writeln!(problems, "actions line {n}: rejected: {e}").map_err(ReplayError::Write)?;
                }
            }
        }
        // Stable: actions at the same instant keep their file order.
        all.sort_by_key(|(_, a)| a.occurred_at);
        Ok(Self(all.into()))
    }

    /// Pushes every action stamped before `before` (all of them with `None`).
    #[allow(clippy::too_many_arguments)]
    fn release(
        &mut self,
        before: Option<Millis>,
        stream: &mut Stream,
        clock: &dyn Fn() -> Millis,
        effects: &mut Vec<Effect>,
        output: &mut dyn Write,
        problems: &mut dyn Write,
        summary: &mut ReplaySummary,
    ) -> Result<(), ReplayError> {
        while self
            .0
            .front()
            .is_some_and(|(_, a)| before.is_none_or(|t| a.occurred_at < t))
        {
            let Some((n, action)) = self.0.pop_front() else {
                break;
            };
            effects.clear();
            let now = clock();
            stream.push_action(action, n, now, now, effects);
            drain(effects, output, problems, summary, "actions line")?;
        }
        Ok(())
    }
}

/// [`replay`], with agents' case actions from `actions` (JSON lines of `CaseAction`) merged into
/// the touchpoints by event time: before each touchpoint, every action stamped strictly earlier
/// than it is applied; the rest after the last touchpoint, before the end-of-input timers fire.
///
/// Ties go to the touchpoint: an agent acts on what the customer did, so a live service most
/// plausibly reads an action after the touchpoints of the same instant. A touchpoint from behind
/// the newest one (a late record) releases nothing: actions follow the file's event-time
/// frontier, as the live partition's clock does.
#[allow(clippy::too_many_arguments)]
pub fn replay_with_actions(
    config: Config,
    input: impl BufRead,
    format: Format,
    actions: Option<&mut dyn BufRead>,
    output: &mut dyn Write,
    problems: &mut dyn Write,
    clock: &dyn Fn() -> Millis,
    until: Option<Millis>,
) -> Result<ReplaySummary, ReplayError> {
    let engine = Arc::new(Engine::new(config));
    let mut stream = Stream::new(engine.clone());
    let mut summary = ReplaySummary::default();
    let mut pending = match actions {
        Some(a) => Pending::read(a, problems, &mut summary)?,
        None => Pending(VecDeque::new()),
    };
    let mut effects = Vec::new();
    let mut line_buf = Vec::new();
    let sensitive = |k: &str| engine.rules().is_sensitive(k);

    let mut handle = |n: u64,
                      decoded: Result<crate::model::Touchpoint, DecodeError>,
                      stream: &mut Stream,
                      summary: &mut ReplaySummary,
                      unit: &str|
     -> Result<(), ReplayError> {
        summary.events += 1;
        match decoded {
            Ok(tp) => {
                pending.release(
                    Some(tp.occurred_at),
                    stream,
                    clock,
                    &mut effects,
                    output,
                    problems,
                    summary,
                )?;
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
    pending.release(
        None,
        &mut stream,
        clock,
        &mut effects,
        output,
        problems,
        &mut summary,
    )?;
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
            Effect::Rejected { seq, class, reason } => {
                summary.actions_rejected += 1;
                writeln!(problems, "{unit} {seq}: rejected ({class}): {reason}")
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
