#!/usr/bin/env bash
# Aplica as migrações pendentes de prisma/migrations/NNN_*.sql, em ordem, cada uma numa transação.
# As já aplicadas ficam registradas na tabela schema_migrations.
#
#   DATABASE_URL=postgresql://... bash scripts/db/migrate.sh
set -euo pipefail

cd "$(dirname "$0")/../.."

if [ -z "${DATABASE_URL:-}" ] && [ -f .env ]; then
    DATABASE_URL=$(grep -E '^DATABASE_URL=' .env | tail -n1 | cut -d= -f2-)
fi
if [ -z "${DATABASE_URL:-}" ]; then
    echo "Erro: DATABASE_URL não definido (.env ou ambiente)" >&2
    exit 1
fi
# o psql não entende o ?schema=public do Prisma
DB_URL="${DATABASE_URL%%\?*}"
PSQL=(psql "$DB_URL" -X -q -v ON_ERROR_STOP=1)

"${PSQL[@]}" -c 'CREATE TABLE IF NOT EXISTS schema_migrations (
    name TEXT PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);'

applied=0
for file in prisma/migrations/*.sql; do
    [ -e "$file" ] || continue
    name=$(basename "$file" .sql)
    done_already=$("${PSQL[@]}" -At -c "SELECT 1 FROM schema_migrations WHERE name = '$name'")
    if [ "$done_already" = "1" ]; then
        continue
    fi
    echo "==> $name"
    "${PSQL[@]}" -1 -f "$file"
    "${PSQL[@]}" -c "INSERT INTO schema_migrations (name) VALUES ('$name')"
    applied=$((applied + 1))
done

echo "Migrações aplicadas: $applied"
