#!/usr/bin/env bash
# Installs (once) promtool (Debian's prometheus package) for the alerting-rule tests
# (tests/deploy.rs) and prints its path. Idempotent: does nothing when promtool is on PATH.
set -euo pipefail
if ! command -v promtool >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends prometheus >&2
fi
command -v promtool
