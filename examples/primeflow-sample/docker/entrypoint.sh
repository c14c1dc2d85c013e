#!/bin/sh
# Container entrypoint for the api: optionally run migrations, then exec the command.
set -eu

cd "${PRIMEFLOW_ROOT:-/app}"

if [ "${RUN_MIGRATIONS:-0}" = "1" ]; then
  echo "entrypoint: running database migrations"
  ./scripts/migrate.sh
fi

exec "$@"
