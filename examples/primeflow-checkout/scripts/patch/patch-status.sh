#!/bin/bash
# PrimeFlow — versão instalada, patches disponíveis e backups

PROJECT_DIR="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$PROJECT_DIR"

echo "=== PrimeFlow ==="
echo "Versão instalada: $(cat VERSION 2>/dev/null || echo '?')"
echo

echo "Patches:"
ls -1 patches 2>/dev/null | grep '^v' || echo "  (nenhum)"
echo

echo "Backups:"
ls -1t backups 2>/dev/null | head -5 || echo "  (nenhum)"
du -sh backups 2>/dev/null
echo

echo "Containers:"
docker compose -f docker/docker-compose.yml ps 2>/dev/null || echo "  docker indisponível"
echo

echo "API:"
curl -s http://localhost:4000/health || echo "  sem resposta"
echo
