#!/bin/bash
# PrimeFlow — volta o backup feito antes de um patch
# Uso: ./scripts/patch/rollback-patch.sh 3.0.0

VERSION=$1
PROJECT_DIR="$(cd "$(dirname "$0")/../.." && pwd)"
COMPOSE="docker compose -f $PROJECT_DIR/docker/docker-compose.yml"

RED='\033[0;31m'
GREEN='\033[0;32m'
YELLOW='\033[1;33m'
NC='\033[0m'

cd "$PROJECT_DIR"

# backup mais recente dessa versão
BACKUP_DIR=$(ls -td backups/pre-patch-v${VERSION}_* 2>/dev/null | head -1)

if [ -z "$BACKUP_DIR" ]; then
    echo -e "${RED}Nenhum backup encontrado para v$VERSION${NC}"
    exit 1
fi

echo -e "${YELLOW}Restaurando $BACKUP_DIR${NC}"
read -p "Tem certeza? Isso vai sobrescrever arquivos e banco. (s/N) " CONFIRM
[ "$CONFIRM" = "s" ] || exit 0

$COMPOSE stop api worker frontend

echo "Restaurando arquivos..."
tar -xzf "$BACKUP_DIR/files.tar.gz" -C "$PROJECT_DIR"
cp "$BACKUP_DIR/VERSION" VERSION

echo "Restaurando banco..."
if [ -f "$BACKUP_DIR/database.sql" ]; then
    cat "$BACKUP_DIR/database.sql" | $COMPOSE exec -T postgres psql -U primeflow -d primeflow
fi

$COMPOSE up -d --build api worker frontend
sleep 10

echo -e "${GREEN}Rollback concluído. Versão: $(cat VERSION)${NC}"
