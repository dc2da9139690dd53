#!/usr/bin/env bash
# Creates (once) a Python virtualenv with the peer stream library quixstreams and fastavro, for
# the end-to-end benchmark's peer comparison (`e2e_bench --peer quix`, scripts/peer/quix_sentinel.py).
# Kept outside the checkout, so clean clones reuse it. Prints the interpreter's path; idempotent.
# Env: CX_PEER_VENV (default ~/.cache/cx-sentinel/venv-quix).
set -euo pipefail
VENV=${CX_PEER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cx-sentinel/venv-quix}
if ! "$VENV/bin/python" -c "import quixstreams, fastavro" 2>/dev/null; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "quixstreams>=3.28,<4" "fastavro>=1.9,<2" >&2
fi
echo "$VENV/bin/python"
