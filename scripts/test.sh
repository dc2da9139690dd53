#!/usr/bin/env bash
# The test command (see README): installs and starts everything the suite needs, idempotently,
# so it works on a fresh machine: the tansu broker (scripts/kafka.sh), the Python test clients
# (scripts/py-env.sh), the openssl CLI (tests/security.rs makes its certificates with it), Chromium,
# promtool and the deploy/ checkers (scripts/chromium.sh, scripts/promtool.sh,
# scripts/manifest-tools.sh). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v openssl >/dev/null; then
  echo "test.sh: installing openssl" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >&2
fi
scripts/kafka.sh up
export CX_KAFKA_BROKERS=127.0.0.1:${CX_KAFKA_PORT:-19092}
CX_TANSU=$(scripts/kafka.sh path)
export CX_TANSU
CX_PYTHON=$(scripts/py-env.sh)
export CX_PYTHON
CX_CHROMIUM=$(scripts/chromium.sh)
CX_PROMTOOL=$(scripts/promtool.sh)
CX_MANIFEST_PYTHON=$(scripts/manifest-tools.sh)
export CX_CHROMIUM CX_PROMTOOL CX_MANIFEST_PYTHON
export CX_REQUIRE_EXTERNAL=1
cargo test --locked "$@"
