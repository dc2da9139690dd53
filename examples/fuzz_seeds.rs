//! Writes the fuzz targets' seed corpora (`fuzz/corpus/<target>/`) from the repository's own
//! fixtures: scenario input lines as JSON, the same touchpoints as Avro datums written by the
//! crate's encoder (bare, and Confluent-framed for our schema and for an older writer), and the
//! changelog values of the states the engine builds from whole scenarios, and the scenarios' case
//! actions as JSON and as Avro datums.
//!
//! `cargo run --example fuzz_seeds` (rerun when a wire format changes; the files are committed,
//! so fuzzing needs no build of this).

use anyhow::{Context, Result};
use apache_avro::Schema;
use apache_avro::types::Value;
use cx_sentinel::codec::{avro, json};
use cx_sentinel::config::Config;
use cx_sentinel::engine::snapshot::VERSION;
use cx_sentinel::engine::{ARRIVAL_UNCHECKED, Engine, Stream};
use cx_sentinel::model::Touchpoint;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Scenarios whose lines between them carry every optional field (tier, agent, attributes,
/// sentiment or not) and, replayed, states with several ring entries, episodes and open cases.
const SCENARIOS: [&str; 4] = [
    "payment_wrong_amount",
    "failure_then_callback",
    "isp_cancellation_loop",
    "reservation_confirmed_in_error",
];

/// Schema id the Confluent target reads with the older writer schema (odd ids; even are ours).
const OLDER_WRITER_ID: u32 = 1;
const OUR_WRITER_ID: u32 = 2;

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("fuzz/corpus");
    let older = older_writer_schema();
    let mut first_lines = Vec::new();
    for name in SCENARIOS {
        let path = root.join("tests/scenarios").join(name).join("input.jsonl");
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        first_lines.push(lines[0].to_string());
        let touchpoints = lines
            .iter()
            .map(|l| json::decode_touchpoint(l.as_bytes(), &|_| false))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| path.display().to_string())?;
        // The last line of each scenario: the richest (tier, agent, attributes) is often last.
        let last = touchpoints.last().expect("scenarios are not empty");
        write(
            &corpus,
            "json_touchpoint",
            name,
            lines[lines.len() - 1].as_bytes(),
        )?;
        write(&corpus, "avro_datum", name, &avro::encode_touchpoint(last))?;
        let mut framed = Vec::new();
        avro::confluent_frame(OUR_WRITER_ID, &avro::encode_touchpoint(last), &mut framed);
        write(&corpus, "confluent_avro", name, &framed)?;
        let mut framed = Vec::new();
        avro::confluent_frame(OLDER_WRITER_ID, &older_datum(&older, last)?, &mut framed);
        write(&corpus, "confluent_avro", &format!("{name}-older"), &framed)?;
        write(&corpus, "changelog_snapshot", name, &snapshot(&touchpoints)?)?;
    }
    // Event time as epoch milliseconds, the other form the JSON decoder takes.
    let first = json::decode_touchpoint(first_lines[0].as_bytes(), &|_| false)?;
    let epoch = first_lines[0].replace(
        &format!("\"{}\"", rfc3339_of(&first_lines[0])?),
        &first.occurred_at.to_string(),
    );
    write(&corpus, "json_touchpoint", "epoch-millis", epoch.as_bytes())?;
    // Case actions: the first byte picks the decoder (even: JSON, odd: Avro datum).
    for name in ["acknowledged_and_resolved", "resolved_case_reopens"] {
        let path = root.join("tests/scenarios").join(name).join("actions.jsonl");
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let action = json::decode_action(line.as_bytes()).with_context(|| path.display().to_string())?;
            write(
                &corpus,
                "case_action",
                &format!("{name}-{i}-json"),
                &[b"\0", line.as_bytes()].concat(),
            )?;
            let avro_seed = [&[1u8][..], &avro::encode_action(&action)].concat();
            write(&corpus, "case_action", &format!("{name}-{i}-avro"), &avro_seed)?;
        }
    }
    Ok(())
}

fn write(corpus: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir: PathBuf = corpus.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

/// The `occurred_at` text of a JSON line.
fn rfc3339_of(line: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(line)?;
    Ok(v["occurred_at"]
        .as_str()
        .context("occurred_at is text in the fixtures")?
        .to_string())
}

/// Our schema before `agent_id` and `attributes`: a writer the resolving path reads.
fn older_writer_schema() -> Schema {
    let mut json: serde_json::Value =
        serde_json::from_str(avro::TOUCHPOINT_SCHEMA_TEXT).expect("the bundled schema is JSON");
    json["fields"]
        .as_array_mut()
        .expect("a record has fields")
        .retain(|f| f["name"] != "agent_id" && f["name"] != "attributes");
    Schema::parse_str(&json.to_string()).expect("a schema with two fields less still parses")
}

fn older_datum(older: &Schema, t: &Touchpoint) -> Result<Vec<u8>> {
    let Value::Record(mut fields) = avro::touchpoint_to_value(t) else {
        unreachable!("a touchpoint is a record")
    };
    fields.retain(|(n, _)| n != "agent_id" && n != "attributes");
    Ok(apache_avro::to_avro_datum(older, Value::Record(fields))?)
}

/// The changelog value of the state a scenario leaves its (one) customer in.
fn snapshot(touchpoints: &[Touchpoint]) -> Result<Vec<u8>> {
    let engine = Arc::new(Engine::new(Config::default()));
    let mut stream = Stream::new(engine.clone());
    let mut effects = Vec::new();
    for (seq, t) in touchpoints.iter().enumerate() {
        stream.push(t.clone(), seq as u64, ARRIVAL_UNCHECKED, 0, &mut effects);
    }
    stream.flush(None, 0, &mut effects);
    let customer = &touchpoints[0].customer_id;
    let mut bytes = Vec::new();
    anyhow::ensure!(
        engine.snapshot(customer, touchpoints.len() as i64 - 1, &mut bytes),
        "the scenario's customer is held"
    );
    anyhow::ensure!(bytes[0] == VERSION);
    Ok(bytes)
}
