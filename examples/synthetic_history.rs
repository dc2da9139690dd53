//! Writes a month (or any span) of realistic touchpoints as JSON lines, from the demo's
//! generator, to try `replay` and `report` on history without real data:
//!
//! ```sh
//! cargo run --release --example synthetic_history -- 30 200000 > events.jsonl
//! cargo run --release -- replay --input events.jsonl --output alerts.jsonl
//! cargo run --release -- report --input alerts.jsonl --touchpoints events.jsonl --output report.html
//! ```
//!
//! Arguments: days (default 30), touchpoints (default 200,000), seed (default 7).

use cx_sentinel::generator::{Generator, GeneratorConfig};
use std::io::Write;

fn main() -> std::io::Result<()> {
    let arg = |i: usize, default: f64| -> f64 {
        std::env::args()
            .nth(i)
            .map(|a| a.parse().expect("arguments: days touchpoints seed"))
            .unwrap_or(default)
    };
    let (days, events, seed) = (arg(1, 30.0), arg(2, 200_000.0), arg(3, 7.0) as u64);
    let mut generator = Generator::new(GeneratorConfig {
        seed,
        customers: (events / 20.0).max(1.0) as u64,
        events_per_second: events / (days * 86_400.0),
        ..GeneratorConfig::default()
    });
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for _ in 0..events as u64 {
        serde_json::to_writer(&mut out, &generator.next_touchpoint())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
