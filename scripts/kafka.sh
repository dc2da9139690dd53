#!/usr/bin/env bash
# Installs (once, ~12 min, cached in ~/.cargo/bin) and runs the tansu Kafka-protocol broker on
# 127.0.0.1 for the tests and the quickstart. Idempotent.
#   scripts/kafka.sh up|down|status
#   scripts/kafka.sh topic NAME [PARTITIONS]
# Env: CX_KAFKA_PORT (default 19092), CX_KAFKA_STATE (pid and log directory).
set -euo pipefail
PORT=${CX_KAFKA_PORT:-19092}
STATE=${CX_KAFKA_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/cx-sentinel/kafka-$PORT}
TANSU_VERSION=0.6.0
TANSU=${CARGO_HOME:-$HOME/.cargo}/bin/tansu
URL=tcp://127.0.0.1:$PORT
mkdir -p "$STATE"

installed() { [ -x "$TANSU" ] && "$TANSU" --version 2>/dev/null | grep -q "$TANSU_VERSION"; }

install() {
  if installed; then return; fi
  echo "kafka.sh: installing tansu $TANSU_VERSION (one time, about 12 minutes)..." >&2
  cargo install tansu --version "$TANSU_VERSION" --features dynostore >"$STATE/install.log" 2>&1 || {
    tail -30 "$STATE/install.log" >&2
    echo "kafka.sh: tansu install failed (log: $STATE/install.log)" >&2
    exit 1
  }
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

running() { [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; }

up() {
  install
  if running && port_open; then
    echo "kafka.sh: tansu already up on 127.0.0.1:$PORT (pid $(cat "$STATE/pid"))"
    return
  fi
  if port_open; then
    echo "kafka.sh: port $PORT is taken by another process; set CX_KAFKA_PORT" >&2
    exit 1
  fi
  nohup "$TANSU" broker \
    --listener-url "$URL" \
    --advertised-listener-url "$URL" \
    --storage-engine memory://tansu/ \
    >"$STATE/broker.log" 2>&1 &
  echo $! >"$STATE/pid"
  for _ in $(seq 1 100); do
    if port_open; then
      echo "kafka.sh: tansu up on 127.0.0.1:$PORT (pid $(cat "$STATE/pid"), log $STATE/broker.log)"
      return
    fi
    if ! running; then break; fi
    sleep 0.2
  done
  tail -20 "$STATE/broker.log" >&2
  echo "kafka.sh: tansu did not start" >&2
  exit 1
}

down() {
  if running; then
    kill "$(cat "$STATE/pid")" && echo "kafka.sh: stopped"
  else
    echo "kafka.sh: not running"
  fi
  rm -f "$STATE/pid"
}

status() {
  if running && port_open; then
    echo "up on 127.0.0.1:$PORT (pid $(cat "$STATE/pid"))"
  else
    echo "down"
    return 3
  fi
}

topic() {
  local name=${1:?topic NAME [PARTITIONS]} parts=${2:-6}
  "$TANSU" topic create "$name" --partitions "$parts" --broker "$URL"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  install) install ;;
  topic) shift; topic "$@" ;;
  *) echo "usage: $0 up|down|status|install|topic NAME [PARTITIONS]" >&2; exit 2 ;;
esac
