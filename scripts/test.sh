#!/usr/bin/env bash
# The test command (see README): everything the suite needs is installed and started here,
# idempotently, so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked "$@"
