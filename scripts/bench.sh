#!/usr/bin/env bash
# End-to-end benchmark (docs/benchmark.md): starts the tansu broker if needed, then runs
# examples/e2e_bench/ in release mode. Arguments pass through to the example:
#   scripts/bench.sh                      # 5,000,000 events (a few minutes on 2 cores)
#   scripts/bench.sh --events 200000      # a quick run (about a minute after compilation)
#   scripts/bench.sh --events 1000000 --perf --latency-seconds 0
#   scripts/bench.sh --help               # every option
# Prints a table; writes target/bench/e2e.json (--out to change).
# Env: CX_KAFKA_PORT (default 19092) or CX_KAFKA_BROKERS to use another broker; CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${CX_KAFKA_PORT:-19092}
STATE=${CX_KAFKA_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/cx-sentinel/kafka-$PORT}
if [ -z "${CX_KAFKA_BROKERS:-}" ]; then
  scripts/kafka.sh up >&2
  export CX_KAFKA_BROKERS=127.0.0.1:$PORT
  # The broker's pid, so the benchmark can report its CPU per event as well.
  if [ -f "$STATE/pid" ]; then
    export CX_BENCH_BROKER_PID=${CX_BENCH_BROKER_PID:-$(cat "$STATE/pid")}
  fi
fi

exec cargo run --release --locked --example e2e_bench -- "$@"
