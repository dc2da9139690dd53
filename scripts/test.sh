#!/usr/bin/env bash
# The test command (see README): installs and starts everything the suite needs, idempotently,
# so it works on a fresh machine: the tansu broker (scripts/kafka.sh) and the Python test clients
# (scripts/py-env.sh), Chromium, promtool and the deploy/ checkers (scripts/chromium.sh,
# scripts/promtool.sh, scripts/manifest-tools.sh). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/kafka.sh up
export CX_KAFKA_BROKERS=127.0.0.1:${CX_KAFKA_PORT:-19092}
CX_PYTHON=$(scripts/py-env.sh)
export CX_PYTHON
CX_CHROMIUM=$(scripts/chromium.sh)
CX_PROMTOOL=$(scripts/promtool.sh)
CX_MANIFEST_PYTHON=$(scripts/manifest-tools.sh)
export CX_CHROMIUM CX_PROMTOOL CX_MANIFEST_PYTHON
export CX_REQUIRE_EXTERNAL=1
cargo test --locked "$@"
