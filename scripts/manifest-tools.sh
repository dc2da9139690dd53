#!/usr/bin/env bash
# Creates (once) what checks deploy/ without a cluster (tests/deploy.rs): a Python virtualenv
# outside the checkout with kubernetes-validate (the Kubernetes API's JSON schemas) and PyYAML,
# and systemd-analyze for the systemd unit. Prints the interpreter's path.
set -euo pipefail
VENV=${CX_MANIFEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cx-sentinel/manifest-venv}
if ! command -v systemd-analyze >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends systemd >&2
fi
if ! "$VENV/bin/python" -c "import kubernetes_validate, yaml" 2>/dev/null; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0" "PyYAML>=6,<7" >&2
fi
echo "$VENV/bin/python"
