#!/usr/bin/env bash
# Installs (once) Debian's headless-capable Chromium for the report test (tests/report.rs) and
# prints its path. Idempotent: does nothing when chromium is already on PATH.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq chromium >&2
fi
command -v chromium
