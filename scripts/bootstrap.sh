#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install patchflow with its dev tools. Idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=.venv
say() { printf 'bootstrap: %s\n' "$*"; }

pick_python() {
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [[ -n "$candidate" ]] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
    PY=$(pick_python) || {
        echo "bootstrap: Python 3.11 or newer is required (Debian/Ubuntu: apt-get install python3 python3-venv)." >&2
        exit 1
    }
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            say "installing python3-venv"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PY" -m venv "$VENV"
        else
            echo "bootstrap: '$PY -m venv' failed; install the venv module (Debian/Ubuntu: apt-get install python3-venv)." >&2
            exit 1
        fi
    fi
    say "created $VENV with $("$VENV/bin/python" --version)"
fi
if [[ ! -f "$VENV/.installed" || pyproject.toml -nt "$VENV/.installed" ]]; then
    say "installing patchflow and its tools into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    touch "$VENV/.installed"
fi
