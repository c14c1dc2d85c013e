#!/bin/sh
# Apply pending Prisma migrations (prisma/migrations/*/migration.sql) to DATABASE_URL.
set -eu

ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
cd "$ROOT"

: "${DATABASE_URL:?DATABASE_URL is not set}"

exec pnpm exec prisma migrate deploy --schema prisma/schema.prisma
