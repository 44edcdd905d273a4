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
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test,tasks,docs,lint]" >&2
    echo "$want" > "$stamp"
fi
# Build the fused C++ engine now, not inside the first run's time budget: at setup and again
# whenever its sources change. It goes into the folder the library loads it from (keyed by this
# environment; see rnnkit/engine/build.py), so later runs load it in milliseconds. If it cannot be
# built, rnnkit says so once and uses the reference loop.
engine_stamp="$VENV/.rnnkit-engine-built"
engine_want="$(cd "$ROOT/rnnkit/engine" && {
    find csrc build.py -type f ! -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum
    echo "${RNNKIT_EXTENSIONS_DIR:-}:${TORCH_EXTENSIONS_DIR:-}"
} | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$engine_stamp" 2>/dev/null)" != "$engine_want" ]; then
    "$VENV/bin/python" -m rnnkit.engine.build >&2 || true
    echo "$engine_want" > "$engine_stamp"
fi
