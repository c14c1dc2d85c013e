#!/bin/sh
# Start the PrimeFlow api in the foreground (used outside docker).
set -eu

ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
export PRIMEFLOW_ROOT="${PRIMEFLOW_ROOT:-$ROOT}"
export PORT="${PORT:-3001}"

exec node "$ROOT/apps/api/server.js"
