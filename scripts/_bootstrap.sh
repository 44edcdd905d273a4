# Sourced by scripts/rnnkit and scripts/test: make sure ./.venv holds rnnkit and what it needs.
# Idempotent and quick once done; reinstalls when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp="$VENV/.rnnkit-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "rnnkit: setting up $VENV (first run only)..." >&2
    "$PY" -m venv "$VENV"
    # torch is pinned here (not in pyproject) so that a fresh CPU machine takes the local
    # CPU wheel instead of several GB of CUDA packages; the library itself accepts any torch 2.x.
    "$VENV/bin/python" -m pip install --quiet "torch==2.13.0" >&2
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test,tasks,docs]" >&2
    # build the fused C++ engine now (cached by torch), not inside the first run's time budget;
    # if it cannot be built, rnnkit says so once and uses the reference loop
    echo "rnnkit: building the fused engine (about a minute, once)..." >&2
    "$VENV/bin/python" -c "from rnnkit.engine.fused import load_extension; load_extension()" >&2 || true
    echo "$want" > "$stamp"
fi
