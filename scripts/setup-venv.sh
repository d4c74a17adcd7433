#!/usr/bin/env bash
# Create .venv (once) with torch==2.13.0 and llmkit installed in editable mode.
# Re-installs only when pyproject.toml changes. Usage: scripts/setup-venv.sh [extras, e.g. dev]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
stamp=".venv/.llmkit-installed${extras:+-$extras}"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
if [ ! -x .venv/bin/python ]; then
    echo "llmkit: creating .venv" >&2
    python3 -m venv .venv
fi
echo "llmkit: installing torch==2.13.0 and llmkit${extras:+[$extras]} into .venv (first run only)" >&2
.venv/bin/python -m pip install --disable-pip-version-check -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --disable-pip-version-check -q "torch==2.13.0"
.venv/bin/python -m pip install --disable-pip-version-check -q -e ".${extras:+[$extras]}"
echo "$want" > "$stamp"
