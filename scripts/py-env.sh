#!/usr/bin/env bash
# Creates (once) a Python virtualenv with the independent test clients (confluent-kafka, fastavro)
# outside the checkout, so clean clones reuse it. Prints the interpreter's path.
set -euo pipefail
VENV=${CX_PY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cx-sentinel/venv}
if ! "$VENV/bin/python" -c "import confluent_kafka, fastavro" 2>/dev/null; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "confluent-kafka>=2.6,<3" "fastavro>=1.9,<2" >&2
fi
echo "$VENV/bin/python"
